//! Matching a request's `Origin` against `allowOrigins` and `allowOriginRegexes`.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use regex::{Regex, RegexSet};

use super::CompileError;
use crate::decision::{AllowReason, DenyReason};
use crate::origin::{self, OriginPattern};

/// The origin entries of one level of rules, indexed so that a lookup does not grow with the list.
///
/// The tables use foldhash rather than SipHash: SipHash resists flooding of tables that an
/// attacker can insert into, and these are built once from the policy and only probed with
/// request data, so a crafted origin can at worst collide with entries the policy itself wrote.
#[derive(Debug, Default)]
pub(super) struct OriginMatcher {
    pub(super) any: bool,
    allow_null: bool,
    exact: HashSet<Box<str>, RandomState>,
    /// Keyed by the host suffix after `*.`, so a lookup costs one probe per label of the host.
    wildcards: HashMap<Box<str>, Vec<WildcardEntry>, RandomState>,
    regexes: Option<RegexMatcher>,
}

#[derive(Debug)]
struct WildcardEntry {
    scheme: String,
    port: Option<String>,
    pattern: String,
}

#[derive(Debug)]
struct RegexMatcher {
    set: RegexSet,
    /// The same expressions one by one, consulted only after the set matched, to name the entry.
    each: Vec<(Regex, String)>,
}

impl OriginMatcher {
    /// Indexes validated entries; an entry validation let through but that does not compile is
    /// reported against its field rather than dropped.
    pub(super) fn compile(
        origins: &[String],
        regexes: &[String],
        allow_null: bool,
    ) -> Result<OriginMatcher, CompileError> {
        let mut matcher = OriginMatcher {
            allow_null,
            ..OriginMatcher::default()
        };
        for entry in origins {
            match origin::parse_config_origin(entry) {
                Ok(OriginPattern::Any) => matcher.any = true,
                Ok(OriginPattern::Exact) => {
                    matcher.exact.insert(entry.as_str().into());
                }
                Ok(OriginPattern::Wildcard {
                    scheme,
                    suffix,
                    port,
                }) => matcher
                    .wildcards
                    .entry(suffix.into_boxed_str())
                    .or_default()
                    .push(WildcardEntry {
                        scheme,
                        port,
                        pattern: entry.clone(),
                    }),
                Err(message) => {
                    return Err(CompileError {
                        field: "allowOrigins",
                        message: format!("{entry:?} {message}"),
                    });
                }
            }
        }
        if !regexes.is_empty() {
            let anchored: Vec<String> = regexes.iter().map(|r| anchor(r)).collect();
            let set = RegexSet::new(&anchored).map_err(|e| CompileError {
                field: "allowOriginRegexes",
                message: crate::validate::regex_error_line(&e),
            })?;
            let mut each = Vec::with_capacity(regexes.len());
            for (src, re) in regexes.iter().zip(&anchored) {
                let compiled = Regex::new(re).map_err(|e| CompileError {
                    field: "allowOriginRegexes",
                    message: crate::validate::regex_error_line(&e),
                })?;
                each.push((compiled, src.clone()));
            }
            matcher.regexes = Some(RegexMatcher { set, each });
        }
        Ok(matcher)
    }

    pub(super) fn matches<'a>(&'a self, origin: &str) -> Result<AllowReason<'a>, DenyReason<'a>> {
        if origin == "null" {
            return if self.allow_null {
                Ok(AllowReason::NullOrigin)
            } else {
                Err(DenyReason::OriginNotAllowed)
            };
        }
        // Entries were validated as origins, so a hit needs no parsing of the request's.
        if let Some(entry) = self.exact.get(origin) {
            return Ok(AllowReason::Exact(entry));
        }
        let Some(parts) = origin::parse_request_origin(origin) else {
            return Err(DenyReason::MalformedOrigin);
        };
        if self.any {
            return Ok(AllowReason::AnyOrigin);
        }
        if !self.wildcards.is_empty() {
            // Every suffix of the host that starts after a dot: `a.b.example.com` probes
            // `b.example.com`, `example.com`, `com`. The part left of the suffix is then one or
            // more whole, non-empty labels, because the host was checked to have no empty label.
            let host = parts.host;
            // Dots found by a byte loop: the host is short, and `match_indices` searches by char.
            let dots = host.bytes().enumerate().filter(|&(_, b)| b == b'.');
            for (i, _) in dots {
                let Some(entries) = self.wildcards.get(&host[i + 1..]) else {
                    continue;
                };
                if let Some(w) = entries
                    .iter()
                    .find(|w| w.scheme == parts.scheme && w.port.as_deref() == parts.port)
                {
                    return Ok(AllowReason::Wildcard(&w.pattern));
                }
            }
        }
        if let Some(re) = &self.regexes
            && re.set.is_match(origin)
            && let Some((_, src)) = re.each.iter().find(|(r, _)| r.is_match(origin))
        {
            return Ok(AllowReason::Regex(src));
        }
        Err(DenyReason::OriginNotAllowed)
    }
}

/// A regex of the policy always matches the whole origin.
fn anchor(re: &str) -> String {
    format!("^(?:{re})$")
}
