//! Webhook TLS without cert-manager: a CA and a serving certificate generated with rcgen, kept in
//! a Secret, the CA published as `caBundle` in the webhook configurations.
//!
//! Only the leader writes ([`Manager::reconcile`]): it creates the Secret, renews the serving
//! certificate when a third of its life is left (and the CA when a year is left, keeping the old
//! CA in the bundle so both stay trusted during the switch), and patches `caBundle`. Every
//! replica reads the Secret ([`Manager::load`]) and swaps the certificate it serves in place.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp, tz::TimeZone};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

use crate::{Error, Result};

/// Secret keys. `tls.crt`/`tls.key` make it a valid `kubernetes.io/tls` Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
/// Annotations recording validity, so renewal needs no X.509 parser.
pub const CA_NOT_AFTER: &str = "corsair.dev/ca-not-after";
pub const CERT_NOT_AFTER: &str = "corsair.dev/cert-not-after";
/// Field manager of the `caBundle` patches.
pub const CERT_MANAGER: &str = "corsair-cert-controller";
const CA_COMMON_NAME: &str = "corsair-webhook-ca";

const DAY: i64 = 24 * 3600;
/// Lifetime of the CA; renewed when less than [`CA_RENEW_BEFORE`] is left.
pub const CA_VALIDITY: SignedDuration = SignedDuration::from_secs(10 * 365 * DAY);
pub const CA_RENEW_BEFORE: SignedDuration = SignedDuration::from_secs(365 * DAY);
/// Lifetime of the serving certificate; renewed when a third of it is left.
pub const CERT_VALIDITY: SignedDuration = SignedDuration::from_secs(365 * DAY);
pub const CERT_RENEW_BEFORE: SignedDuration = SignedDuration::from_secs(122 * DAY);

/// Where the certificate lives and whom it serves.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// Namespace of the controller, its Service and the Secret.
    pub namespace: String,
    pub secret_name: String,
    /// The webhook Service; the certificate covers its in-cluster DNS names.
    pub service_name: String,
    pub mutating_webhook: String,
    pub validating_webhook: String,
}

/// The PEM material in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The current CA first, then possibly the previous one (during a CA rotation).
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_not_after: Timestamp,
    pub cert_not_after: Timestamp,
}

/// What a bundle needs at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Fresh,
    /// The serving certificate is near its end: issue a new one with the same CA.
    Cert,
    /// The CA is near its end: new CA (the old one stays in the bundle) and a new certificate.
    Ca,
}

/// Sets the validity of `params`, at day granularity (UTC midnight), which is plenty here.
fn set_validity(params: &mut CertificateParams, not_before: Timestamp, not_after: Timestamp) {
    let day = |t: Timestamp| {
        let date = t.to_zoned(TimeZone::UTC).date();
        rcgen::date_time_ymd(
            i32::from(date.year()),
            u8::try_from(date.month()).unwrap_or(1),
            u8::try_from(date.day()).unwrap_or(1),
        )
    };
    params.not_before = day(not_before);
    params.not_after = day(not_after);
}

fn ca_params(not_before: Timestamp, not_after: Timestamp) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::Cert)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "corsair");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, not_before, not_after);
    Ok(params)
}

/// The DNS names the API server uses to reach the webhook Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// Issues a serving certificate for `dns_names`, signed by the CA key.
fn issue_cert(
    ca_key_pem: &str,
    dns_names: Vec<String>,
    now: Timestamp,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(Error::Cert)?;
    // The issuer needs only the CA's name and key: the name is fixed, so no parser is needed.
    let issuer = Issuer::new(ca_params(now, now)?, ca_key);
    let mut params = CertificateParams::new(dns_names.clone()).map_err(Error::Cert)?;
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(
        &mut params,
        now - SignedDuration::from_secs(DAY),
        now + CERT_VALIDITY,
    );
    let key = KeyPair::generate().map_err(Error::Cert)?;
    let cert = params.signed_by(&key, &issuer).map_err(Error::Cert)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new CA and serving certificate. `previous_ca` stays in the bundle (CA rotation).
pub fn generate(
    dns_names: Vec<String>,
    now: Timestamp,
    previous_ca: Option<&str>,
) -> Result<Bundle> {
    let ca_key = KeyPair::generate().map_err(Error::Cert)?;
    let ca_not_after = now + CA_VALIDITY;
    let ca = ca_params(now - SignedDuration::from_secs(DAY), ca_not_after)?
        .self_signed(&ca_key)
        .map_err(Error::Cert)?;
    let ca_key_pem = ca_key.serialize_pem();
    let (cert_pem, key_pem) = issue_cert(&ca_key_pem, dns_names, now)?;
    let mut ca_pem = ca.pem();
    if let Some(previous) = previous_ca.and_then(first_pem_block) {
        ca_pem.push_str(&previous);
    }
    Ok(Bundle {
        ca_pem,
        ca_key_pem,
        cert_pem,
        key_pem,
        ca_not_after,
        cert_not_after: now + CERT_VALIDITY,
    })
}

/// The first `-----BEGIN CERTIFICATE-----` block of a PEM bundle.
fn first_pem_block(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &pem[start..end]))
}

impl Bundle {
    /// What this bundle needs at `now`.
    pub fn renewal(&self, now: Timestamp) -> Renewal {
        if self.ca_not_after - CA_RENEW_BEFORE <= now {
            Renewal::Ca
        } else if self.cert_not_after - CERT_RENEW_BEFORE <= now {
            Renewal::Cert
        } else {
            Renewal::Fresh
        }
    }

    /// A new serving certificate from the same CA.
    pub fn reissue(&self, dns_names: Vec<String>, now: Timestamp) -> Result<Bundle> {
        let (cert_pem, key_pem) = issue_cert(&self.ca_key_pem, dns_names, now)?;
        Ok(Bundle {
            cert_pem,
            key_pem,
            cert_not_after: now + CERT_VALIDITY,
            ..self.clone()
        })
    }

    /// Reads a bundle from the Secret; every key and annotation must be present and valid.
    pub fn from_secret(secret: &Secret) -> Result<Bundle> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let bad = |reason: String| Error::BadSecret {
            secret: name.clone(),
            reason,
        };
        let data = secret
            .data
            .as_ref()
            .ok_or_else(|| bad("has no data".into()))?;
        let text = |key: &str| -> Result<String> {
            let bytes = data
                .get(key)
                .ok_or_else(|| bad(format!("has no key {key}")))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| bad(format!("{key} is not UTF-8 PEM")))
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let time = |key: &str| -> Result<Timestamp> {
            let value = annotations
                .get(key)
                .ok_or_else(|| bad(format!("has no annotation {key}")))?;
            value.parse().map_err(|e| {
                bad(format!(
                    "annotation {key}: {value:?} is not a timestamp: {e}"
                ))
            })
        };
        Ok(Bundle {
            ca_pem: text(CA_CERT_KEY)?,
            ca_key_pem: text(CA_KEY_KEY)?,
            cert_pem: text(CERT_KEY)?,
            key_pem: text(KEY_KEY)?,
            ca_not_after: time(CA_NOT_AFTER)?,
            cert_not_after: time(CERT_NOT_AFTER)?,
        })
    }

    /// The Secret holding this bundle.
    pub fn to_secret(&self, config: &CertConfig, resource_version: Option<String>) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(config.secret_name.clone()),
                namespace: Some(config.namespace.clone()),
                resource_version,
                labels: Some(BTreeMap::from([(
                    crate::reconcile::MANAGED_BY_LABEL.to_owned(),
                    crate::reconcile::MANAGED_BY_VALUE.to_owned(),
                )])),
                annotations: Some(BTreeMap::from([
                    (CA_NOT_AFTER.to_owned(), self.ca_not_after.to_string()),
                    (CERT_NOT_AFTER.to_owned(), self.cert_not_after.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (CA_CERT_KEY.to_owned(), bytes(&self.ca_pem)),
                (CA_KEY_KEY.to_owned(), bytes(&self.ca_key_pem)),
                (CERT_KEY.to_owned(), bytes(&self.cert_pem)),
                (KEY_KEY.to_owned(), bytes(&self.key_pem)),
            ])),
            ..Secret::default()
        }
    }
}

/// Reads and (on the leader) maintains the certificate Secret.
#[derive(Clone)]
pub struct Manager {
    client: Client,
    config: CertConfig,
}

impl Manager {
    pub fn new(client: Client, config: CertConfig) -> Self {
        Manager { client, config }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// The bundle in the Secret, if the Secret exists (every replica).
    pub async fn load(&self) -> Result<Option<Bundle>> {
        let secret = self
            .secrets()
            .get_opt(&self.config.secret_name)
            .await
            .map_err(Error::kube("read webhook certificate Secret"))?;
        secret.as_ref().map(Bundle::from_secret).transpose()
    }

    /// Leader only: makes the Secret hold a fresh bundle and publishes its CA in the webhook
    /// configurations. Returns the bundle in force. A Secret another replica wrote in between
    /// makes the write fail with a conflict; the next round reads it.
    pub async fn reconcile(&self, now: Timestamp) -> Result<Bundle> {
        let dns = service_dns_names(&self.config.service_name, &self.config.namespace);
        let secrets = self.secrets();
        let existing = secrets
            .get_opt(&self.config.secret_name)
            .await
            .map_err(Error::kube("read webhook certificate Secret"))?;
        let bundle = match existing {
            None => {
                let bundle = generate(dns, now, None)?;
                secrets
                    .create(
                        &PostParams::default(),
                        &bundle.to_secret(&self.config, None),
                    )
                    .await
                    .map_err(Error::kube("create webhook certificate Secret"))?;
                tracing::info!(secret = %self.config.secret_name, "created the webhook CA and certificate");
                bundle
            }
            Some(secret) => {
                let version = secret.metadata.resource_version.clone();
                let (bundle, renewal) = match Bundle::from_secret(&secret) {
                    Ok(bundle) => {
                        let renewal = bundle.renewal(now);
                        let next = match renewal {
                            Renewal::Fresh => bundle,
                            Renewal::Cert => bundle.reissue(dns, now)?,
                            Renewal::Ca => generate(dns, now, Some(&bundle.ca_pem))?,
                        };
                        (next, renewal)
                    }
                    Err(err) => {
                        tracing::warn!(%err, "webhook certificate Secret unusable; replacing it");
                        (generate(dns, now, None)?, Renewal::Ca)
                    }
                };
                if renewal != Renewal::Fresh {
                    secrets
                        .replace(
                            &self.config.secret_name,
                            &PostParams::default(),
                            &bundle.to_secret(&self.config, version),
                        )
                        .await
                        .map_err(Error::kube("renew webhook certificate Secret"))?;
                    tracing::info!(?renewal, "renewed the webhook certificate");
                }
                bundle
            }
        };
        self.publish_ca_bundle(&bundle.ca_pem).await?;
        Ok(bundle)
    }

    /// Writes `caBundle` into every webhook of both configurations. A configuration that does
    /// not exist (yet) is skipped: the next round patches it.
    async fn publish_ca_bundle(&self, ca_pem: &str) -> Result<()> {
        let encoded = ByteString(ca_pem.as_bytes().to_vec());
        self.publish_to::<MutatingWebhookConfiguration>(
            &self.config.mutating_webhook,
            &encoded,
            |c| {
                c.webhooks
                    .into_iter()
                    .flatten()
                    .map(|w| (w.name, w.client_config.ca_bundle))
                    .collect()
            },
            (
                "read MutatingWebhookConfiguration",
                "patch MutatingWebhookConfiguration caBundle",
            ),
        )
        .await?;
        self.publish_to::<ValidatingWebhookConfiguration>(
            &self.config.validating_webhook,
            &encoded,
            |c| {
                c.webhooks
                    .into_iter()
                    .flatten()
                    .map(|w| (w.name, w.client_config.ca_bundle))
                    .collect()
            },
            (
                "read ValidatingWebhookConfiguration",
                "patch ValidatingWebhookConfiguration caBundle",
            ),
        )
        .await
    }

    /// Patches `caBundle` into the webhooks of one configuration whose bundles differ.
    async fn publish_to<K>(
        &self,
        name: &str,
        encoded: &ByteString,
        bundles: fn(K) -> Vec<(String, Option<ByteString>)>,
        (read, patch): (&'static str, &'static str),
    ) -> Result<()>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let current = api
            .get_opt(name)
            .await
            .map_err(Error::kube(read))?
            .map(bundles);
        if let Some(body) = current.and_then(|c| ca_bundle_patch(&c, encoded)) {
            api.patch(name, &self.patch_params(), &Patch::Strategic(body))
                .await
                .map_err(Error::kube(patch))?;
            tracing::info!(name, "published caBundle");
        }
        Ok(())
    }

    fn patch_params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(CERT_MANAGER.to_owned()),
            ..PatchParams::default()
        }
    }
}

/// A strategic merge patch setting `caBundle` of every webhook that lacks it: `webhooks` merges
/// by `name`, so the rest of each webhook (owned by Helm or kubectl) is left alone. `None` when
/// every webhook already carries `ca_bundle`.
pub fn ca_bundle_patch(
    webhooks: &[(String, Option<ByteString>)],
    ca_bundle: &ByteString,
) -> Option<serde_json::Value> {
    if webhooks
        .iter()
        .all(|(_, current)| current.as_ref() == Some(ca_bundle))
    {
        return None;
    }
    let webhooks: Vec<serde_json::Value> = webhooks
        .iter()
        .map(|(name, _)| json!({ "name": name, "clientConfig": { "caBundle": ca_bundle } }))
        .collect();
    Some(json!({ "webhooks": webhooks }))
}

#[cfg(test)]
mod tests;
