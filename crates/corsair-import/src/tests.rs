//! Unit tests of the helpers every source relies on.

use crate::example::{prefix_example, sample, unanchored_example};
use crate::rules::{full_match, origin_problem, parse_duration, split_list};
use crate::sources::traefik_is_anchored;

#[test]
fn durations_in_every_format_the_sources_write() {
    let table = [
        ("600", Some(600)),
        ("90s", Some(90)),
        ("1h", Some(3600)),
        ("1h30m", Some(5400)),
        ("1.5h", Some(5400)),
        ("480h", Some(1_728_000)),
        ("1200m", Some(72_000)),
        ("500ms", Some(0)),
        ("", None),
        ("soon", None),
        ("5d", None),
    ];
    for (text, want) in table {
        assert_eq!(parse_duration(text), want, "{text:?}");
    }
}

#[test]
fn anchored_means_searching_equals_matching() {
    let table = [
        (r"^https://a\.example\.com$", true),
        (r"^https://(a|b)\.example\.com$", true),
        (r"^https://a\.example\.com$|^https://b", false),
        (r"https://a\.example\.com$", false),
        (r"^https://a\.example\.com", false),
        (r"^https://a\.example\.com\$", false),
    ];
    for (re, want) in table {
        assert_eq!(traefik_is_anchored(re), want, "{re}");
    }
}

#[test]
fn samples_are_matched_whole_by_their_regex() {
    for re in [
        r"https://.*\.example\.com",
        r"^https://([a-z0-9-]+\.)?example\.com$",
        r"https://(www|app)\.example\.com",
        r"https://[a-z]+\.example\.org(:[0-9]+)?",
    ] {
        let s = sample(re).unwrap_or_else(|| panic!("no sample for {re}"));
        assert!(full_match(re, &s), "{re} does not match its sample {s}");
    }
}

#[test]
fn examples_are_allowed_by_the_source_and_refused_by_the_policy() {
    let re = r"https://(www|app)\.example\.com";
    let e = unanchored_example(re, false, |o| full_match(re, o)).expect("an example");
    assert_eq!(e, "https://www.example.com.attacker.example");
    // Nothing to show when the policy allows everything the source did.
    assert_eq!(unanchored_example(".*", false, |_| true), None);

    let kept = r"https://partner\.example\.net(:[0-9]+)?";
    let e = prefix_example("https://partner.example.net", |o| full_match(kept, o)).unwrap();
    assert!(
        e.starts_with("https://partner.example.net") && !full_match(kept, &e),
        "{e}"
    );
}

#[test]
fn origins_are_judged_by_the_policy_crate() {
    assert_eq!(origin_problem("https://a.example.com"), None);
    assert_eq!(origin_problem("https://*.example.com"), None);
    for bad in [
        "https://a.example.com/",
        "https://A.example.com",
        "https://a.example.com:443",
        "a.example.com",
    ] {
        assert!(origin_problem(bad).is_some(), "{bad}");
    }
}

#[test]
fn lists_split_on_commas_without_empty_items() {
    assert_eq!(split_list("GET, PUT,,POST , "), ["GET", "PUT", "POST"]);
    assert!(split_list("").is_empty());
}
