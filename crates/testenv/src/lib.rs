//! A real Kubernetes control plane (etcd + kube-apiserver +
//! kube-controller-manager) on loopback, for tests and benchmarks.
#![deny(rust_2018_idioms)]
