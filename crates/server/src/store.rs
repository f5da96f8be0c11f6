//! Proxies in the API server: every read and write of proxy state goes
//! through [`ProxyStore`]; nothing is kept in memory, so any number of API
//! replicas can serve the same proxies and a restart loses nothing.

use std::collections::HashMap;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use vpno_api::{Mask, MaskConsumer, MaskPhase};

use crate::proxy::{
    self, CreateProxyRequest, MANAGED_BY, MANAGED_BY_LABEL, PROXY_LABEL, PodTemplate, Proxy,
    ProxyCredentials, ProxyObjects,
};

/// Failures of proxy storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Every slot of `--max-proxies` is taken.
    #[error("the instance limit of {max} proxies is reached; delete a proxy first")]
    Full {
        /// The limit.
        max: u32,
    },
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

/// Reads and writes proxies in one namespace.
#[derive(Clone)]
pub struct ProxyStore {
    client: Client,
    namespace: String,
    max_proxies: Option<u32>,
    template: PodTemplate,
}

impl std::fmt::Debug for ProxyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyStore")
            .field("namespace", &self.namespace)
            .field("max_proxies", &self.max_proxies)
            .field("template", &self.template)
            .finish()
    }
}

fn is_managed(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels.as_ref().is_some_and(|l| {
        l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            && l.contains_key(PROXY_LABEL)
    })
}

impl ProxyStore {
    /// A store for proxies in `namespace`, at most `max_proxies` of them.
    pub fn new(
        client: Client,
        namespace: String,
        max_proxies: Option<u32>,
        template: PodTemplate,
    ) -> Self {
        ProxyStore {
            client,
            namespace,
            max_proxies,
            template,
        }
    }

    /// The namespace proxies live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The proxy port.
    pub fn port(&self) -> u16 {
        self.template.port
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn masks(&self) -> Api<Mask> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn consumers(&self) -> Api<MaskConsumer> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a proxy: record, slot (when limited), Mask. The Pod follows
    /// once the Mask's consumer is Active.
    pub async fn create(&self, request: CreateProxyRequest) -> Result<Proxy, StoreError> {
        let id = proxy::new_id();
        let creds = ProxyCredentials::generate();
        let record = self
            .secrets()
            .create(
                &PostParams::default(),
                &proxy::record_secret(&id, &self.namespace, &request, &creds),
            )
            .await?;
        if let Some(max) = self.max_proxies {
            match self.take_slot(&id, &record, max).await {
                Ok(Some(slot)) => tracing::debug!(slot, "proxy slot taken"),
                Ok(None) => {
                    self.delete_record(&id).await;
                    return Err(StoreError::Full { max });
                }
                Err(e) => {
                    self.delete_record(&id).await;
                    return Err(e);
                }
            }
        }
        let mask = match self
            .masks()
            .create(
                &PostParams::default(),
                &proxy::proxy_mask(&id, &request, &record),
            )
            .await
        {
            Ok(mask) => mask,
            Err(e) => {
                self.delete_slots(&id).await;
                self.delete_record(&id).await;
                return Err(e.into());
            }
        };
        tracing::info!(
            proxies_limited = self.max_proxies.is_some(),
            "proxy created"
        );
        let objects = ProxyObjects {
            record,
            mask: Some(mask),
            consumer: None,
            pod: None,
        };
        Ok(proxy::view(
            &objects,
            &self.namespace,
            self.template.port,
            true,
            Timestamp::now(),
        ))
    }

    /// Takes one of `max` slot Leases for `id`; `None` when all are held.
    /// Leases whose holder record is gone are reclaimed.
    async fn take_slot(
        &self,
        id: &str,
        record: &Secret,
        max: u32,
    ) -> Result<Option<u32>, StoreError> {
        if max == 0 {
            return Ok(None);
        }
        let leases = self.leases();
        let start = rand::rng().random_range(0..max);
        for i in 0..max {
            let k = (start + i) % max;
            match leases
                .create(&PostParams::default(), &proxy::slot_lease(k, id, record))
                .await
            {
                Ok(_) => return Ok(Some(k)),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // All held: reclaim slots whose record no longer exists (deleted while
        // garbage collection has not caught up, or an API instance died
        // between the two writes).
        for k in 0..max {
            let Some(lease) = leases.get_opt(&proxy::slot_name(k)).await? else {
                if leases
                    .create(&PostParams::default(), &proxy::slot_lease(k, id, record))
                    .await
                    .is_ok()
                {
                    return Ok(Some(k));
                }
                continue;
            };
            let Some(owner) = lease
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
            else {
                continue;
            };
            let holder = self.secrets().get_opt(&owner.name).await?;
            if holder.as_ref().and_then(|h| h.metadata.uid.as_deref()) == Some(owner.uid.as_str()) {
                continue;
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: lease.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match leases.delete(&proxy::slot_name(k), &dp).await {
                Ok(_) => tracing::info!(slot = k, "reclaimed an orphaned proxy slot"),
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                Err(e) => return Err(e.into()),
            }
            match leases
                .create(&PostParams::default(), &proxy::slot_lease(k, id, record))
                .await
            {
                Ok(_) => return Ok(Some(k)),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    async fn delete_slots(&self, id: &str) {
        let lp = ListParams::default().labels(&format!("{PROXY_LABEL}={id}"));
        if let Err(e) = self
            .leases()
            .delete_collection(&DeleteParams::default(), &lp)
            .await
        {
            tracing::warn!(error = %e, "deleting proxy slot failed; it is reclaimed later");
        }
    }

    async fn delete_record(&self, id: &str) {
        if let Err(e) = self.secrets().delete(id, &DeleteParams::default()).await
            && !is_status(&e, 404)
        {
            tracing::warn!(error = %e, "deleting proxy record failed");
        }
    }

    /// The record of `id`, if it exists and is a proxy record of this API.
    async fn record(&self, id: &str) -> Result<Option<Secret>, StoreError> {
        if !proxy::is_valid_id(id) {
            return Ok(None);
        }
        Ok(self
            .secrets()
            .get_opt(id)
            .await?
            .filter(|s| is_managed(&s.metadata)))
    }

    /// One proxy, with credentials. Creates its Pod and Service when they
    /// are due and missing (the watcher normally does it first).
    pub async fn get(&self, id: &str) -> Result<Option<Proxy>, StoreError> {
        let Some(record) = self.record(id).await? else {
            return Ok(None);
        };
        let mask = self.masks().get_opt(id).await?;
        let consumer = self.consumers().get_opt(id).await?;
        let mut pod = self.pods().get_opt(id).await?;
        if pod.is_none()
            && mask.is_some()
            && let Some(c) = &consumer
            && self.ensure_workload(&record, c).await?
        {
            pod = self.pods().get_opt(id).await?;
        }
        let objects = ProxyObjects {
            record,
            mask,
            consumer,
            pod,
        };
        Ok(Some(proxy::view(
            &objects,
            &self.namespace,
            self.template.port,
            true,
            Timestamp::now(),
        )))
    }

    /// Every proxy, oldest first, without credentials.
    pub async fn list(&self) -> Result<Vec<Proxy>, StoreError> {
        let lp = ListParams::default().labels(&proxy::managed_selector());
        let all = ListParams::default();
        let (secrets, masks_api, consumers_api, pods_api) =
            (self.secrets(), self.masks(), self.consumers(), self.pods());
        let (records, masks, consumers, pods) = futures::try_join!(
            secrets.list(&lp),
            masks_api.list(&lp),
            consumers_api.list(&all),
            pods_api.list(&lp),
        )?;
        let mut masks: HashMap<String, Mask> = masks
            .items
            .into_iter()
            .filter_map(|m| Some((m.metadata.name.clone()?, m)))
            .collect();
        let mut consumers: HashMap<String, MaskConsumer> = consumers
            .items
            .into_iter()
            .filter_map(|c| Some((c.metadata.name.clone()?, c)))
            .collect();
        let mut pods: HashMap<String, Pod> = pods
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, p)))
            .collect();
        let mut records = records.items;
        records.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &a.metadata.name,
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &b.metadata.name,
                ))
        });
        Ok(records
            .into_iter()
            .filter(|r| r.metadata.name.as_deref().is_some_and(proxy::is_valid_id))
            .map(|record| {
                let name = record.metadata.name.clone().unwrap_or_default();
                let objects = ProxyObjects {
                    mask: masks.remove(&name),
                    consumer: consumers.remove(&name),
                    pod: pods.remove(&name),
                    record,
                };
                proxy::view(
                    &objects,
                    &self.namespace,
                    self.template.port,
                    false,
                    Timestamp::now(),
                )
            })
            .collect())
    }

    /// Deletes a proxy: its Mask (and through it the consumer, Pod and
    /// Service), its slot and its record. `None` when there is no such proxy.
    pub async fn delete(&self, id: &str) -> Result<Option<Proxy>, StoreError> {
        let Some(record) = self.record(id).await? else {
            return Ok(None);
        };
        let mask = self.masks().get_opt(id).await?;
        let objects = ProxyObjects {
            record: record.clone(),
            mask,
            consumer: None,
            pod: None,
        };
        let mut view = proxy::view(
            &objects,
            &self.namespace,
            self.template.port,
            false,
            Timestamp::now(),
        );
        let dp = DeleteParams::background();
        match self.masks().delete(id, &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        self.delete_slots(id).await;
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: record.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match self.secrets().delete(id, &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!("proxy deleted");
        view.state = proxy::ProxyState::Deleting;
        view.message = "the proxy is being deleted".into();
        Ok(Some(view))
    }

    /// Creates the Pod and Service of the proxy whose record is `record` once
    /// `consumer` is Active. Returns whether the consumer was ready for them.
    async fn ensure_workload(
        &self,
        record: &Secret,
        consumer: &MaskConsumer,
    ) -> Result<bool, StoreError> {
        if consumer.phase() != MaskPhase::Active || record.metadata.deletion_timestamp.is_some() {
            return Ok(false);
        }
        let id = record.metadata.name.clone().unwrap_or_default();
        let request = proxy::request_of(record);
        let Some(pod) = proxy::proxy_pod(&id, &request, consumer, &self.template) else {
            return Ok(false);
        };
        match self.pods().create(&PostParams::default(), &pod).await {
            Ok(_) => tracing::info!("proxy pod created"),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
        match self
            .services()
            .create(
                &PostParams::default(),
                &proxy::proxy_service(&id, consumer, &self.template),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }

    /// Keeps a proxy's Pod in step with its consumer: created once the
    /// consumer is Active, deleted when the consumer loses its slot or is
    /// assigned other credentials (it is then created again).
    async fn on_consumer(&self, consumer: MaskConsumer) -> Result<(), StoreError> {
        let Some(name) = consumer.metadata.name.clone() else {
            return Ok(());
        };
        if !proxy::is_valid_id(&name) {
            return Ok(());
        }
        let wanted_secret = match (consumer.phase(), consumer.assignment()) {
            (MaskPhase::Active, Some(a)) => Some(a.secret.clone()),
            _ => None,
        };
        let pod = self
            .pods()
            .get_opt(&name)
            .await?
            .filter(|p| is_managed(&p.metadata));
        match (&wanted_secret, pod) {
            (Some(secret), Some(pod))
                if proxy::pod_credentials_secret(&pod) == Some(secret.as_str()) =>
            {
                Ok(())
            }
            (None, None) => Ok(()),
            (_, Some(pod)) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    return Ok(());
                }
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::background()
                };
                match self.pods().delete(&name, &dp).await {
                    Ok(_) => {
                        tracing::info!("proxy pod deleted: its VPN slot was lost or reassigned")
                    }
                    Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(())
            }
            (Some(_), None) => {
                if let Some(record) = self.record(&name).await? {
                    self.ensure_workload(&record, &consumer).await?;
                }
                Ok(())
            }
        }
    }

    /// Watches MaskConsumers and creates each proxy's Pod and Service as soon
    /// as its consumer turns Active. Runs until `cancel`.
    pub async fn run_workload_watcher(self, cancel: CancellationToken) {
        let stream = watcher(self.consumers(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                None => return,
                Some(Ok(consumer)) => {
                    if let Err(e) = self.on_consumer(consumer).await {
                        tracing::warn!(error = %e, "creating a proxy pod failed; retried on the next event or GET");
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "MaskConsumer watch failed; retrying"),
            }
        }
    }
}
