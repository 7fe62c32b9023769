//! Validation errors and lints, each naming the field path and the value.

use crate::model::CorsPolicySpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem with a policy: `spec.allowOrigins[2]: "https://app.example.com/" is not an origin: it has a path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Field path such as `spec.routes[1].allowOrigins[2]`.
    pub path: String,
    /// A stable identifier for lints (`null-origin`, `mixed-scheme`, …) and errors.
    pub code: &'static str,
    /// What is wrong and, for warnings, the risk; includes the offending value.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every finding for a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Warning)
    }
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// Validates and lints `spec`; field paths start at `spec.`.
pub fn validate(spec: &CorsPolicySpec) -> Report {
    let _ = spec;
    todo!("engine issue")
}
