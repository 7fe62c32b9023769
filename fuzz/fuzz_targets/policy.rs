//! Policy parsing: any text through load_document, validate and compile. Nothing may panic,
//! compile must agree with validate, and a compiled engine must decide without panicking.
#![no_main]

use corsair_policy::{Engine, RequestInfo, load_document, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = load_document(text) else {
        return;
    };
    let report = validate(&doc.spec);
    match Engine::compile(&doc.spec) {
        Ok((engine, warnings)) => {
            assert!(
                !report.has_errors(),
                "compiled a policy with errors: {report:?}"
            );
            assert!(!warnings.has_errors());
            for path in ["/", "/api", "/api/x"] {
                for origin in [
                    None,
                    Some("https://app.example.com"),
                    Some("null"),
                    Some(""),
                ] {
                    let req = RequestInfo {
                        method: "OPTIONS",
                        path,
                        host: Some("api.example.com"),
                        origin,
                        request_method: Some("PUT"),
                        request_headers: &["content-type, authorization"],
                        request_private_network: true,
                    };
                    let _ = engine.decide(&req).action();
                }
            }
        }
        Err(refused) => assert!(
            refused.has_errors(),
            "refused without an error: {refused:?}"
        ),
    }
});
