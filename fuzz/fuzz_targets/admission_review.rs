//! The webhooks' whole handling of a request body, without a server: arbitrary bytes through
//! `webhook::review` for the mutating (`/inject`) or validating (`/validate`) webhook, the
//! function the HTTPS server calls. The first byte picks the webhook.
//!
//! Oracle: no panic; a body that is not an AdmissionReview is a parse error (a 400), never an
//! encoding error; an answer is an AdmissionReview whose response echoes the request's uid and
//! either denies with a message, or allows; a patch, when there is one, is a base64 JSON patch
//! that applies to the request's object and leaves a Pod.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use corsair_controller::webhook::{
    InjectConfig, Metrics, ReviewError, Webhook, WebhookState, review,
};
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static STATE: LazyLock<WebhookState> =
    LazyLock::new(|| WebhookState::new(InjectConfig::default(), Metrics::unregistered()));

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let webhook = if which % 2 == 0 {
        Webhook::Inject
    } else {
        Webhook::Validate
    };
    let out = match review(&STATE, webhook, body) {
        Ok(out) => out,
        Err(ReviewError::Parse(_) | ReviewError::NoRequest) => return,
        Err(err @ ReviewError::Encode(_)) => panic!("{err}"),
    };
    // Fields the webhook ignores are skipped without being checked (serde_json does not
    // validate `\u` escapes it skips), so a body it answers may still not be a JSON value.
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let answer: Value = match serde_json::from_slice(&out) {
        Ok(v) => v,
        Err(e) => panic!("the answer is not JSON: {e}"),
    };
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    if !input.is_null() {
        assert_eq!(response["uid"], input["request"]["uid"], "uid not echoed");
    }
    let Some(allowed) = response["allowed"].as_bool() else {
        panic!("no allowed field: {response}");
    };
    if !allowed {
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "a denial without a message: {response}"
        );
        assert!(response.get("patch").is_none(), "a denial with a patch");
        return;
    }
    let Some(encoded) = response.get("patch") else {
        return;
    };
    assert_eq!(webhook, Webhook::Inject, "the validating webhook patched");
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes =
        match base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap_or("!")) {
            Ok(b) => b,
            Err(e) => panic!("patch is not base64: {e}"),
        };
    let patch: json_patch::Patch = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => panic!("patch is not a JSON patch: {e}"),
    };
    if input.is_null() {
        return;
    }
    let mut object = input["request"]["object"].clone();
    if let Err(e) = json_patch::patch(&mut object, &patch) {
        panic!("patch does not apply to the object: {e}");
    }
    if let Err(e) = serde_json::from_value::<Pod>(object) {
        panic!("the patched object is not a Pod: {e}");
    }
});
