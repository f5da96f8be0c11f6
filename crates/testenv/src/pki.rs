//! Key material for the control plane: a CA, a serving certificate for
//! 127.0.0.1 (and the `kubernetes` Service) signed by it, an admin client
//! certificate, and the service-account signing key pair.

use std::net::{IpAddr, Ipv4Addr};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM-encoded key material of one control plane.
pub(crate) struct Pki {
    /// The CA certificate clients trust.
    pub ca_cert_pem: String,
    /// The CA's private key (the controller-manager signs with it).
    pub ca_key_pem: String,
    /// A client certificate in group `system:masters` (the API server uses it
    /// towards kubelets).
    pub client_cert_pem: String,
    /// Its private key.
    pub client_key_pem: String,
    /// The API server's serving certificate (SAN 127.0.0.1, localhost), signed by the CA.
    pub serving_cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub serving_key_pem: String,
    /// Service-account token signing key (PKCS#8).
    pub sa_key_pem: String,
    /// Service-account token verification key (SubjectPublicKeyInfo).
    pub sa_pub_pem: String,
}

/// ClusterIP of the `kubernetes` Service (first address of 10.96.0.0/12).
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// Generates fresh key material (ECDSA P-256, ring backend); the serving
/// certificate is also valid for `extra_ips`.
pub(crate) fn generate(extra_ips: &[Ipv4Addr]) -> Result<Pki, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vpno-testenv-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    let mut ips = vec![Ipv4Addr::LOCALHOST, KUBERNETES_SERVICE_IP];
    ips.extend(extra_ips.iter().filter(|ip| !ip.is_loopback()));
    params
        .subject_alt_names
        .extend(ips.into_iter().map(|ip| SanType::IpAddress(IpAddr::V4(ip))));
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = params.signed_by(&serving_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "vpno-testenv-admin");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = params.signed_by(&client_key, &issuer)?;

    let sa_key = KeyPair::generate()?;
    Ok(Pki {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem,
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        serving_cert_pem: serving_cert.pem(),
        serving_key_pem: serving_key.serialize_pem(),
        sa_key_pem: sa_key.serialize_pem(),
        sa_pub_pem: sa_key.public_key_pem(),
    })
}
