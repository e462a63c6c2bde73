//! Finds where a key path sits in the TOML text, and which key path a byte span falls in.
//!
//! serde drops positions once it has built the raw structs, so validation asks a second,
//! span-keeping parse (`toml_edit::Document`) where each offending value was written.

use std::ops::Range;

use toml_edit::{Document, DocumentMut, Item, Table, Value};

use super::diagnostic::{KeyPath, Seg};

/// A parsed document plus its text, for turning key paths and spans into line:column.
pub(crate) struct Source<'a> {
    text: &'a str,
    doc: Option<Document<&'a str>>,
}

/// A node of the document: tables from headers, inline values and their elements.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Source<'a> {
    /// `text` that does not parse still gives a `Source`; it just cannot locate keys.
    pub(crate) fn new(text: &'a str) -> Self {
        Source {
            text,
            doc: Document::parse(text).ok(),
        }
    }

    /// 1-based line and column of the value at `path`; for a key that is absent, the nearest
    /// enclosing table or value that is present (so a missing key points at its table).
    pub(crate) fn locate(&self, path: &KeyPath) -> Option<(usize, usize)> {
        let span = self.span_of(path)?;
        Some(self.line_col(span.start))
    }

    /// Like [`Source::locate`], but at the key itself when the path ends in one that is written.
    pub(crate) fn locate_key(&self, path: &KeyPath) -> Option<(usize, usize)> {
        let (last, parent) = path.0.split_last()?;
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        for seg in parent {
            node = node.child(seg)?.0;
        }
        match node.child(last) {
            Some((_, Some(key_span))) => Some(self.line_col(key_span.start)),
            _ => self.locate(path),
        }
    }

    fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for seg in &path.0 {
            let Some((child, key_span)) = node.child(seg) else {
                break;
            };
            // An implicit or dotted table has no span of its own: its key is the next best place.
            if let Some(span) = child.span().or(key_span) {
                best = Some(span);
            }
            node = child;
        }
        best
    }

    /// The deepest key path whose key or value encloses `span` (an error span from serde).
    pub(crate) fn path_at(&self, span: &Range<usize>) -> KeyPath {
        let mut best = KeyPath::root();
        if let Some(doc) = &self.doc {
            search(
                Node::Table(doc.as_table()),
                &mut KeyPath::root(),
                span,
                &mut best,
            );
        }
        best
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

/// Visits every node; tables may be split across the file, so a node's children need not lie
/// inside its own span and the whole tree is searched.
fn search(node: Node<'_>, path: &mut KeyPath, target: &Range<usize>, best: &mut KeyPath) {
    for (seg, child, key_span) in node.children() {
        path.0.push(seg);
        let encloses = |s: &Range<usize>| s.start <= target.start && target.end <= s.end;
        let hit =
            child.span().as_ref().is_some_and(encloses) || key_span.as_ref().is_some_and(encloses);
        if hit && path.0.len() > best.0.len() {
            *best = path.clone();
        }
        search(child, path, target, best);
        path.0.pop();
    }
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(item) => item.span(),
            Node::Table(table) => table.span(),
            Node::Value(value) => value.span(),
        }
    }

    /// The child at `seg` and the span of its key, if it is a keyed child.
    fn child(self, seg: &Seg) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match (self, seg) {
            (Node::Item(Item::Table(table)) | Node::Table(table), Seg::Key(key)) => table
                .get_key_value(key)
                .map(|(k, item)| (Node::Item(item), k.span())),
            (Node::Item(Item::Value(Value::InlineTable(table))), Seg::Key(key))
            | (Node::Value(Value::InlineTable(table)), Seg::Key(key)) => table
                .get_key_value(key)
                .map(|(k, item)| (Node::Item(item), k.span())),
            (Node::Item(Item::ArrayOfTables(array)), Seg::Index(i)) => {
                array.get(*i).map(|t| (Node::Table(t), None))
            }
            (Node::Item(Item::Value(Value::Array(array))), Seg::Index(i))
            | (Node::Value(Value::Array(array)), Seg::Index(i)) => {
                array.get(*i).map(|v| (Node::Value(v), None))
            }
            _ => None,
        }
    }

    fn children(self) -> Vec<(Seg, Node<'a>, Option<Range<usize>>)> {
        let keyed = |names: Vec<&str>| {
            names
                .into_iter()
                .filter_map(|name| {
                    let seg = Seg::Key(name.to_owned());
                    self.child(&seg)
                        .map(|(node, key_span)| (seg, node, key_span))
                })
                .collect()
        };
        let indexed = |len: usize| {
            (0..len)
                .filter_map(|i| {
                    let seg = Seg::Index(i);
                    self.child(&seg)
                        .map(|(node, key_span)| (seg, node, key_span))
                })
                .collect()
        };
        match self {
            Node::Item(Item::Table(table)) | Node::Table(table) => {
                keyed(table.iter().map(|(k, _)| k).collect())
            }
            Node::Item(Item::Value(Value::InlineTable(table)))
            | Node::Value(Value::InlineTable(table)) => {
                keyed(table.iter().map(|(k, _)| k).collect())
            }
            Node::Item(Item::ArrayOfTables(array)) => indexed(array.len()),
            Node::Item(Item::Value(Value::Array(array))) | Node::Value(Value::Array(array)) => {
                indexed(array.len())
            }
            _ => Vec::new(),
        }
    }
}

/// Removes the key that `path` names (or, when it ends in array indices, the array holding
/// them, so that later indices keep naming the elements they named in the file). False when
/// there is nothing to remove.
pub(crate) fn cut(doc: &mut DocumentMut, path: &KeyPath) -> bool {
    let mut segs = path.0.as_slice();
    while let [rest @ .., Seg::Index(_)] = segs {
        segs = rest;
    }
    let [parent @ .., Seg::Key(key)] = segs else {
        return false;
    };
    let mut item = doc.as_item_mut();
    for seg in parent {
        // `get` first: `get_mut` with a key inserts it when absent.
        let found = match seg {
            Seg::Key(k) => item.get(k.as_str()).is_some(),
            Seg::Index(i) => item.get(*i).is_some(),
        };
        if !found {
            return false;
        }
        let next = match seg {
            Seg::Key(k) => item.get_mut(k.as_str()),
            Seg::Index(i) => item.get_mut(*i),
        };
        match next {
            Some(next) => item = next,
            None => return false,
        }
    }
    item.as_table_like_mut()
        .and_then(|table| table.remove(key))
        .is_some()
}
