//! Cloud Endpoints ESP (v1, nginx) and ESPv2 (Envoy): `--cors_*` flags on a container, in its
//! `args` or, for ESPv2, in a literal `ESPv2_ARGS` variable (read after the args, so it wins).
//!
//! Flags left out take the proxy's defaults (ESPv2's `start_proxy.py`, ESP's `start_esp`):
//! origin `*`, methods `GET, POST, PUT, PATCH, DELETE, OPTIONS`, a fixed header list, exposed
//! `Content-Length,Content-Range`, no credentials, max age 480h (ESPv2) or 1728000 s (ESP).
//! `--cors_preset=basic` allows one `--cors_allow_origin`, `cors_with_regex` one
//! `--cors_allow_origin_regex`. ESPv2 compares the origin byte for byte or matches the whole of
//! it against the regex, and answers `*` by echoing the request's origin (with credentials: every
//! site); ESP v1 sent the configured origin literally and searched the regex anywhere in the
//! origin, ignoring case.

use corsair_policy::UnmatchedPreflights;
use serde_json::Value;

use super::istio::exact_origin;
use super::traefik::is_anchored;
use super::{Outcome, PolicyDraft, at, ns_flag, strings};
use crate::example;
use crate::rules::{self, Ctx, Draft, Fields};
use crate::{OptIn, Severity, SourceRef};

const DEFAULT_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const DEFAULT_HEADERS_V2: &str = "DNT,User-Agent,X-User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
const DEFAULT_HEADERS_V1: &str = "DNT,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
const DEFAULT_EXPOSE: &str = "Content-Length,Content-Range";

pub(crate) fn convert(doc: &Value, source: &SourceRef) -> Outcome {
    let pod = if source.kind == "Pod" {
        at(doc, &["spec"])
    } else {
        at(doc, &["spec", "template", "spec"])
    };
    let base = if source.kind == "Pod" {
        "spec"
    } else {
        "spec.template.spec"
    };
    let mut found: Vec<(String, Value)> = Vec::new();
    for list in ["containers", "initContainers"] {
        for (i, c) in at(pod, &[list])
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let args = strings(at(c, &["args"]))
                .into_iter()
                .chain(strings(at(c, &["command"])))
                .chain(env_args(c).into_iter().flatten());
            if args.into_iter().any(|a| a.starts_with("--cors_")) {
                found.push((format!("{base}.{list}[{i}]"), c.clone()));
            }
        }
    }
    let Some((path, container)) = found.first().cloned() else {
        return Outcome::NotASource;
    };
    let mut ctx = Ctx::default();
    for (other, _) in found.iter().skip(1) {
        ctx.warn(
            "container-not-converted",
            other,
            "a second container with --cors_* flags in the same pod: one policy per workload, so only the first is converted".to_owned(),
        );
    }
    let cname = at(&container, &["name"])
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let image = at(&container, &["image"]).as_str().unwrap_or_default();
    let v1 = is_v1(image);
    let mut args: Vec<String> = strings(at(&container, &["command"]));
    args.extend(strings(at(&container, &["args"])));
    let mut flags = Flags::parse(&args, ARGS);
    if let Some(env) = env_args(&container) {
        if v1 {
            ctx.note(
                "flags-not-read",
                &format!("{path}.{ENV_FIELD}"),
                format!("ESP v1 does not read {ENV_ARGS} (ESPv2's serverless image does): its flags are not converted"),
            );
        } else {
            flags.0.extend(Flags::parse(&env, ENV_FIELD).0);
        }
    }
    if at(&container, &["env"])
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| at(e, &["name"]).as_str() == Some(ENV_ARGS) && !at(e, &["valueFrom"]).is_null())
    {
        ctx.warn(
            "flags-not-read",
            &format!("{path}.{ENV_FIELD}"),
            "comes from a ConfigMap or Secret (valueFrom) that the manifest does not show: the --cors_* flags in it are not converted; pass the resolved value in the manifest to convert them".to_owned(),
        );
    }
    let flag_field = |name: &str| format!("{path}.{}[--{name}]", flags.source_of(name));

    let Some(preset) = flags.get("cors_preset") else {
        ctx.note(
            "cors-disabled",
            &flag_field("cors_preset"),
            "not set: ESP adds no CORS headers without a preset, so there is nothing to convert"
                .to_owned(),
        );
        return Outcome::Nothing(ctx.findings);
    };
    let credentials = flags.bool("cors_allow_credentials");
    let mut d = Draft {
        credentials,
        star_headers_echoed: !v1,
        fields: Fields {
            origins: flag_field(if preset == "cors_with_regex" {
                "cors_allow_origin_regex"
            } else {
                "cors_allow_origin"
            }),
            credentials: flag_field("cors_allow_credentials"),
            methods: flag_field("cors_allow_methods"),
            headers: flag_field("cors_allow_headers"),
            expose: flag_field("cors_expose_headers"),
            max_age: flag_field("cors_max_age"),
        },
        unmatched: Some(if v1 && preset == "cors_with_regex" {
            UnmatchedPreflights::Forward
        } else {
            UnmatchedPreflights::Reject
        }),
        ..Draft::default()
    };
    let origin_field = d.fields.origins.clone();
    match preset.as_str() {
        "basic" => {
            let origin = flags
                .get("cors_allow_origin")
                .unwrap_or_else(|| "*".to_owned());
            exact_origin(&origin, &origin_field, &mut d, &mut ctx);
            if v1 && d.any_origin.is_some() && credentials {
                ctx.warn(
                    "wildcard-credentials-dropped",
                    &d.fields.credentials,
                    "set with origin \"*\": ESP sent `Access-Control-Allow-Origin: *` with `Access-Control-Allow-Credentials: true`, which browsers refuse for requests with cookies, so pages only ever read responses without credentials. The policy allows \"*\" without credentials, which is what browsers saw. To allow credentials properly, list the origins that need them and set allowCredentials: true".to_owned(),
                );
                d.credentials = false;
            }
        }
        "cors_with_regex" => {
            let Some(re) = flags
                .get("cors_allow_origin_regex")
                .filter(|r| !r.is_empty())
            else {
                ctx.warn("cors-disabled", &origin_field, "empty with --cors_preset=cors_with_regex: ESP refuses to start, so nothing is converted".to_owned());
                return Outcome::Nothing(ctx.findings);
            };
            regex(&re, v1, &origin_field, &mut d, &mut ctx);
        }
        other => {
            ctx.warn("cors-disabled", &flag_field("cors_preset"), format!("{other:?} is neither basic nor cors_with_regex: ESP refuses to start, so nothing is converted"));
            return Outcome::Nothing(ctx.findings);
        }
    }
    let list = |name: &str, default: &str| {
        rules::split_list(&flags.get(name).unwrap_or_else(|| default.to_owned()))
    };
    d.methods = Some(list("cors_allow_methods", DEFAULT_METHODS));
    d.headers = Some(list(
        "cors_allow_headers",
        if v1 {
            DEFAULT_HEADERS_V1
        } else {
            DEFAULT_HEADERS_V2
        },
    ));
    d.expose = Some(list("cors_expose_headers", DEFAULT_EXPOSE));
    // ESP's nginx sent the lists as written; ESPv2's Envoy echoes only a lone `*`.
    if v1 {
        rules::literal_stars(&mut d, &mut ctx, "ESP", rules::StarLists::Literal);
    } else {
        rules::literal_stars(&mut d, &mut ctx, "ESPv2", rules::StarLists::EchoLoneStar);
    }
    d.max_age = if v1 {
        Some(1_728_000)
    } else {
        let v = flags
            .get("cors_max_age")
            .unwrap_or_else(|| "480h".to_owned());
        rules::parse_duration(&v).or_else(|| {
            ctx.warn(
                "invalid-value",
                &flag_field("cors_max_age"),
                format!("{v:?} is not a duration: ESPv2 refuses to start with it; left out"),
            );
            None
        })
    };
    if !v1 && !image.contains("endpoints-runtime") {
        ctx.note(
            "esp-version-assumed",
            &format!("{path}.image"),
            format!("{image:?} is not an endpoints-runtime image: read as ESPv2"),
        );
    }

    let Some(level) = rules::lower(d, &mut ctx) else {
        let mut findings = ctx.findings;
        findings.push(super::no_origin_left());
        return Outcome::Nothing(findings);
    };
    let ns = ns_flag(source);
    let from_env = if flags
        .0
        .iter()
        .any(|(n, _, s)| n.starts_with("cors_") && *s == ENV_FIELD)
    {
        format!(" (those in {ENV_ARGS} too)")
    } else {
        String::new()
    };
    let opt_in = if source.kind == "Pod" {
        OptIn::Note(vec![
            format!(
                "a bare Pod is not re-created by a controller: add the label corsair.dev/inject: enabled and the annotation corsair.dev/policy: {} to its manifest and re-create it,",
                source.name
            ),
            format!("and remove the --cors_* flags{from_env} from container {cname}"),
        ])
    } else {
        OptIn::Command(format!(
            "kubectl annotate {} {}{ns} corsair.dev/policy={}\n# then remove the --cors_* flags{from_env} from container {cname}, so that Corsair alone answers CORS",
            source.kind.to_ascii_lowercase(),
            source.name,
            source.name
        ))
    };
    let findings = ctx.findings;
    Outcome::Policies(vec![PolicyDraft {
        name: source.name.clone(),
        spec: rules::top_level(level),
        findings,
        opt_in,
        incomplete: ctx.incomplete,
    }])
}

fn regex(re: &str, v1: bool, field: &str, d: &mut Draft, ctx: &mut Ctx) {
    // ESP v1 used nginx's case-insensitive `~*`.
    let policy_re = if v1 {
        format!("(?i){re}")
    } else {
        re.to_owned()
    };
    if let Some(problem) = rules::regex_problem(&policy_re) {
        ctx.push(
            Severity::Warning,
            "regex-not-converted",
            field,
            format!("{re:?} is not valid in Corsair's regex syntax ({problem}): left out, so the origins it matched are no longer allowed"),
        );
        return;
    }
    if v1 && !is_anchored(re) {
        let shown = example::unanchored_example(re, true, |o| rules::full_match(&policy_re, o))
            .map(|e| format!(", such as {e}"))
            .unwrap_or_default();
        ctx.warn(
            "origin-anchored",
            field,
            format!("ESP searched {re:?} anywhere in the origin, so it also allowed origins that merely contain a match{shown}; Corsair matches a regex against the whole origin"),
        );
    }
    d.regexes.push(policy_re);
}

/// The variable ESPv2's serverless entrypoint reads extra flags from.
const ENV_ARGS: &str = "ESPv2_ARGS";
/// Where a flag was written, as a field of the container.
const ARGS: &str = "args";
const ENV_FIELD: &str = "env[ESPv2_ARGS]";

/// The flags in a container's literal `ESPv2_ARGS`, split as ESPv2's `env_start_proxy.py` does:
/// on `,`, or on the delimiter named by a leading `^DELIM^` (for values that hold commas).
fn env_args(container: &Value) -> Option<Vec<String>> {
    let value = at(container, &["env"])
        .as_array()?
        .iter()
        .find(|e| at(e, &["name"]).as_str() == Some(ENV_ARGS))
        .and_then(|e| at(e, &["value"]).as_str())?;
    let (delimiter, list) = value
        .strip_prefix('^')
        .and_then(|rest| rest.split_once('^'))
        .filter(|(d, _)| !d.is_empty())
        .unwrap_or((",", value));
    Some(
        list.split(delimiter)
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

fn is_v1(image: &str) -> bool {
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
    image.contains("endpoints-runtime:")
        && !image.contains("serverless")
        && (tag == "1" || tag.starts_with("1."))
}

/// `--name=value`, `--name value` and bare boolean `--name`, as ESP's argparse reads them, each
/// with where it was written (`args`, or `env[ESPv2_ARGS]`).
struct Flags(Vec<(String, Option<String>, &'static str)>);

impl Flags {
    fn parse(args: &[String], source: &'static str) -> Flags {
        let mut out = Vec::new();
        let mut i = 0;
        while i < args.len() {
            if let Some(flag) = args[i].strip_prefix("--") {
                if let Some((name, value)) = flag.split_once('=') {
                    out.push((name.to_owned(), Some(value.to_owned()), source));
                } else if args.get(i + 1).is_some_and(|next| !next.starts_with("--"))
                    && flag != "cors_allow_credentials"
                {
                    out.push((flag.to_owned(), Some(args[i + 1].clone()), source));
                    i += 1;
                } else {
                    out.push((flag.to_owned(), None, source));
                }
            }
            i += 1;
        }
        Flags(out)
    }
    /// The last value given (argparse keeps the last).
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(n, ..)| n == name)
            .map(|(_, v, _)| v.clone().unwrap_or_default())
    }
    fn bool(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|(n, v, _)| n == name && v.as_deref().is_none_or(|v| v != "false"))
    }
    /// Where the flag's last value was written; `args` for a flag left out.
    fn source_of(&self, name: &str) -> &'static str {
        self.0
            .iter()
            .rev()
            .find(|(n, ..)| n == name)
            .map_or(ARGS, |(.., s)| s)
    }
}
