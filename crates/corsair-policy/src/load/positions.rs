//! Where each field of a YAML document sits, so that a finding about `spec.routes[0].allowOrigin`
//! can point at its line and column, as a compiler would.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

/// Field paths (`spec.routes[0].pathPrefix`, the form findings use) and the 1-based line and
/// column of the file where each is written: a mapping entry at its key, a list item at itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Positions(HashMap<String, (u64, u64)>);

impl Positions {
    /// The position of `path`, or of its nearest ancestor that has one (a field the finding
    /// names inside a value written on one line, or a default that is not written at all).
    pub fn of(&self, path: &str) -> Option<(u64, u64)> {
        let mut path = path;
        loop {
            if let Some(at) = self.0.get(path) {
                return Some(*at);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// A YAML node with its location, read through serde-saphyr's span support.
pub(super) struct Node(Spanned<Tree>);

pub(super) enum Tree {
    Map(Vec<(Spanned<String>, Node)>),
    Seq(Vec<Node>),
    Scalar(Value),
}

impl Node {
    /// The plain JSON value, and the position of every field and item. `line_offset` is the
    /// number of lines of the file before this document.
    pub(super) fn into_parts(self, line_offset: usize) -> (Value, Positions) {
        let mut positions = Positions::default();
        let value = walk(
            self.0.value,
            String::new(),
            line_offset as u64,
            &mut positions,
        );
        (value, positions)
    }
}

fn walk(tree: Tree, path: String, offset: u64, out: &mut Positions) -> Value {
    match tree {
        Tree::Scalar(v) => v,
        Tree::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, Node(item))| {
                    let at = format!("{path}[{i}]");
                    out.0.insert(at.clone(), place(&item.referenced, offset));
                    walk(item.value, at, offset, out)
                })
                .collect(),
        ),
        Tree::Map(entries) => {
            let mut map = Map::new();
            for (key, Node(value)) in entries {
                let at = if path.is_empty() {
                    key.value.clone()
                } else {
                    format!("{path}.{}", key.value)
                };
                out.0.insert(at.clone(), place(&key.referenced, offset));
                map.insert(key.value, walk(value.value, at, offset, out));
            }
            Value::Object(map)
        }
    }
}

fn place(at: &serde_saphyr::Location, offset: u64) -> (u64, u64) {
    (at.line() + offset, at.column())
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<Tree>::deserialize(d).map(Node)
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Tree::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries: Vec<(Spanned<String>, Node)> = Vec::new();
        // A repeated key: the last one wins when the entries are walked into a JSON object.
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value::<Node>()?));
        }
        Ok(Tree::Map(entries))
    }
}
