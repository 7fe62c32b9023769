//! Webhook TLS without cert-manager: a CA and a serving certificate generated with rcgen, the CA
//! published as `caBundle` in the webhook configurations.
//!
//! Two Secrets keep the CA's private key away from the serving path. The CA Secret
//! ([`CertConfig::ca_secret_name`]: `ca.crt`, `ca.key`) is read and written only by the leader
//! ([`Manager::reconcile`]); the serving Secret ([`CertConfig::secret_name`], `kubernetes.io/tls`:
//! `tls.crt`, `tls.key`, and the public `ca.crt`) is all that every replica reads
//! ([`Manager::load`]). Whoever reads the serving Secret can impersonate the webhook until the
//! certificate expires, but cannot mint certificates the API server would trust.
//!
//! The leader creates both Secrets, renews the serving certificate when a third of its life is
//! left (and the CA when a year is left, keeping the old CA in the bundle so both stay trusted
//! during the switch), and patches `caBundle`. A serving Secret of the older single-Secret layout
//! (with `ca.key`) is split: its CA moves to the CA Secret, and the key leaves the serving one.

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

/// Where the certificates live and whom they serve.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// Namespace of the controller, its Service and the Secrets.
    pub namespace: String,
    /// The serving Secret: certificate and key of the webhook, read by every replica.
    pub secret_name: String,
    /// The CA Secret: the CA's certificate and private key, read and written by the leader only.
    pub ca_secret_name: String,
    /// The webhook Service; the certificate covers its in-cluster DNS names.
    pub service_name: String,
    pub mutating_webhook: String,
    pub validating_webhook: String,
}

/// The CA (leader only): its certificate(s) and private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Authority {
    /// The current CA first, then possibly the previous one (during a CA rotation).
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub ca_not_after: Timestamp,
}

/// What a serving replica gets: the serving certificate and its key, and the public CA bundle.
/// No CA key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The CA certificates the API server trusts (`caBundle`).
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_not_after: Timestamp,
}

/// Keeps the CA key out of logs and panic messages.
impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("ca_not_after", &self.ca_not_after)
            .finish_non_exhaustive()
    }
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

/// A serving certificate from a CA whose key is dropped at once: what a replica serves until
/// it has read the serving Secret (the API server trusts it not, so `/readyz` stays false).
pub fn placeholder(dns_names: Vec<String>, now: Timestamp) -> Result<Bundle> {
    Authority::generate(now, None)?.issue(dns_names, now)
}

impl Authority {
    /// A new CA. `previous_ca` (its first certificate) stays in the bundle: CA rotation.
    pub fn generate(now: Timestamp, previous_ca: Option<&str>) -> Result<Authority> {
        let ca_key = KeyPair::generate().map_err(Error::Cert)?;
        let ca_not_after = now + CA_VALIDITY;
        let ca = ca_params(now - SignedDuration::from_secs(DAY), ca_not_after)?
            .self_signed(&ca_key)
            .map_err(Error::Cert)?;
        let mut ca_pem = ca.pem();
        if let Some(previous) = previous_ca.and_then(first_pem_block) {
            ca_pem.push_str(&previous);
        }
        Ok(Authority {
            ca_pem,
            ca_key_pem: ca_key.serialize_pem(),
            ca_not_after,
        })
    }

    /// Whether the CA is near its end and must be replaced (see [`CA_RENEW_BEFORE`]).
    pub fn needs_rotation(&self, now: Timestamp) -> bool {
        self.ca_not_after - CA_RENEW_BEFORE <= now
    }

    /// Issues a serving certificate for `dns_names`, signed by this CA.
    pub fn issue(&self, dns_names: Vec<String>, now: Timestamp) -> Result<Bundle> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(Error::Cert)?;
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
        Ok(Bundle {
            ca_pem: self.ca_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_not_after: now + CERT_VALIDITY,
        })
    }

    /// Reads the CA Secret; both keys and the annotation must be present and valid.
    pub fn from_secret(secret: &Secret) -> Result<Authority> {
        let fields = SecretFields::new(secret)?;
        Ok(Authority {
            ca_pem: fields.text(CA_CERT_KEY)?,
            ca_key_pem: fields.text(CA_KEY_KEY)?,
            ca_not_after: fields.time(CA_NOT_AFTER)?,
        })
    }

    /// The CA Secret (`Opaque`: it is not a serving certificate, nothing should mount it).
    pub fn to_secret(&self, config: &CertConfig, resource_version: Option<String>) -> Secret {
        secret(
            &config.ca_secret_name,
            config,
            resource_version,
            "Opaque",
            (CA_NOT_AFTER, self.ca_not_after),
            [(CA_CERT_KEY, &self.ca_pem), (CA_KEY_KEY, &self.ca_key_pem)],
        )
    }
}

/// The first `-----BEGIN CERTIFICATE-----` block of a PEM bundle.
fn first_pem_block(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &pem[start..end]))
}

impl Bundle {
    /// Whether the serving certificate is near its end (see [`CERT_RENEW_BEFORE`]).
    pub fn needs_renewal(&self, now: Timestamp) -> bool {
        self.cert_not_after - CERT_RENEW_BEFORE <= now
    }

    /// Reads the serving Secret; `ca.crt`, `tls.crt`, `tls.key` and the annotation must be
    /// present and valid. A `ca.key` in it (older layout) is not read.
    pub fn from_secret(secret: &Secret) -> Result<Bundle> {
        let fields = SecretFields::new(secret)?;
        Ok(Bundle {
            ca_pem: fields.text(CA_CERT_KEY)?,
            cert_pem: fields.text(CERT_KEY)?,
            key_pem: fields.text(KEY_KEY)?,
            cert_not_after: fields.time(CERT_NOT_AFTER)?,
        })
    }

    /// The serving Secret (`kubernetes.io/tls`, so cert-manager-style mounts work too).
    pub fn to_secret(&self, config: &CertConfig, resource_version: Option<String>) -> Secret {
        secret(
            &config.secret_name,
            config,
            resource_version,
            "kubernetes.io/tls",
            (CERT_NOT_AFTER, self.cert_not_after),
            [
                (CA_CERT_KEY, &self.ca_pem),
                (CERT_KEY, &self.cert_pem),
                (KEY_KEY, &self.key_pem),
            ],
        )
    }
}

fn secret<const N: usize>(
    name: &str,
    config: &CertConfig,
    resource_version: Option<String>,
    type_: &str,
    (annotation, not_after): (&str, Timestamp),
    data: [(&str, &String); N],
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(config.namespace.clone()),
            resource_version,
            labels: Some(BTreeMap::from([(
                crate::reconcile::MANAGED_BY_LABEL.to_owned(),
                crate::reconcile::MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                annotation.to_owned(),
                not_after.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Typed access to a Secret's data and annotations, with errors naming the Secret and the key.
struct SecretFields<'s> {
    name: String,
    data: &'s BTreeMap<String, ByteString>,
    annotations: Option<&'s BTreeMap<String, String>>,
}

impl<'s> SecretFields<'s> {
    fn new(secret: &'s Secret) -> Result<Self> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        match &secret.data {
            Some(data) => Ok(SecretFields {
                name,
                data,
                annotations: secret.metadata.annotations.as_ref(),
            }),
            None => Err(Error::BadSecret {
                secret: name,
                reason: "has no data".into(),
            }),
        }
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadSecret {
            secret: self.name.clone(),
            reason,
        }
    }

    fn text(&self, key: &str) -> Result<String> {
        let bytes = self
            .data
            .get(key)
            .ok_or_else(|| self.bad(format!("has no key {key}")))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| self.bad(format!("{key} is not UTF-8 PEM")))
    }

    fn time(&self, key: &str) -> Result<Timestamp> {
        let value = self
            .annotations
            .and_then(|a| a.get(key))
            .ok_or_else(|| self.bad(format!("has no annotation {key}")))?;
        value.parse().map_err(|e| {
            self.bad(format!(
                "annotation {key}: {value:?} is not a timestamp: {e}"
            ))
        })
    }
}

/// Reads and (on the leader) maintains the certificate Secrets.
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

    /// The serving bundle, if its Secret exists (every replica). Never reads the CA Secret.
    pub async fn load(&self) -> Result<Option<Bundle>> {
        let secret = self
            .secrets()
            .get_opt(&self.config.secret_name)
            .await
            .map_err(Error::kube("read webhook certificate Secret"))?;
        secret.as_ref().map(Bundle::from_secret).transpose()
    }

    /// Leader only: makes the CA Secret hold a CA that is not near its end, publishes it in the
    /// webhook configurations, then makes the serving Secret hold a fresh certificate from it.
    /// Returns the serving bundle in force. A Secret another replica wrote in between makes the
    /// write fail with a conflict; the next round reads it.
    pub async fn reconcile(&self, now: Timestamp) -> Result<Bundle> {
        let dns = service_dns_names(&self.config.service_name, &self.config.namespace);
        let secrets = self.secrets();
        let ca_secret = secrets
            .get_opt(&self.config.ca_secret_name)
            .await
            .map_err(Error::kube("read webhook CA Secret"))?;
        let serving_secret = secrets
            .get_opt(&self.config.secret_name)
            .await
            .map_err(Error::kube("read webhook certificate Secret"))?;

        // The CA: the CA Secret's, else the one an older serving Secret carries, else a new one.
        let in_ca_secret = ca_secret.as_ref().and_then(|secret| {
            Authority::from_secret(secret)
                .inspect_err(|err| tracing::warn!(%err, "webhook CA Secret unusable; replacing it"))
                .ok()
        });
        let legacy = serving_secret
            .as_ref()
            .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key(CA_KEY_KEY)));
        let stored = match (&in_ca_secret, legacy) {
            (Some(ca), _) => Some(ca.clone()),
            (None, Some(old)) if ca_secret.is_none() => Authority::from_secret(old).ok(),
            (None, _) => None,
        };
        let stored_bundle = serving_secret
            .as_ref()
            .and_then(|secret| Bundle::from_secret(secret).ok());
        let authority = match stored {
            Some(ca) if !ca.needs_rotation(now) => ca,
            Some(old) => Authority::generate(now, Some(&old.ca_pem))?,
            // The CA the replicas' certificates chain to stays trusted beside the new one, as in
            // a rotation: each replica serves its certificate until it reads the Secret again.
            None => Authority::generate(now, stored_bundle.as_ref().map(|b| b.ca_pem.as_str()))?,
        };
        if in_ca_secret.as_ref() != Some(&authority) {
            let version = ca_secret.and_then(|s| s.metadata.resource_version);
            self.write(&secrets, authority.to_secret(&self.config, version), "CA")
                .await?;
        }

        // The bundle is published before a certificate from a new CA is written: every replica
        // serves what the serving Secret holds, and the API server must already trust it. The
        // bundle keeps the previous CA, so the certificates served until then stay trusted.
        self.publish_ca_bundle(&authority.ca_pem).await?;

        // The serving certificate: reissued when missing, near its end, or from another CA.
        let bundle = match &stored_bundle {
            Some(b) if b.ca_pem == authority.ca_pem && !b.needs_renewal(now) => b.clone(),
            _ => authority.issue(dns, now)?,
        };
        if stored_bundle.as_ref() != Some(&bundle) || legacy.is_some() {
            let version = serving_secret
                .as_ref()
                .and_then(|s| s.metadata.resource_version.clone());
            self.write(&secrets, bundle.to_secret(&self.config, version), "serving")
                .await?;
        }
        Ok(bundle)
    }

    /// Creates `secret`, or replaces it when it carries the resourceVersion it was read at.
    async fn write(&self, secrets: &Api<Secret>, secret: Secret, which: &str) -> Result<()> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        if secret.metadata.resource_version.is_none() {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(Error::kube("create webhook certificate Secret"))?;
            tracing::info!(secret = %name, "created the webhook {which} Secret");
        } else {
            secrets
                .replace(&name, &PostParams::default(), &secret)
                .await
                .map_err(Error::kube("replace webhook certificate Secret"))?;
            tracing::info!(secret = %name, "updated the webhook {which} Secret");
        }
        Ok(())
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
