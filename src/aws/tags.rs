//! A resource's tags, as the inventory keeps them and the plans compare them.
//!
//! The inventory holds every resource of every Stack and Database: with 1,000 of each, about
//! 18,000 entries of about six tags. As a `BTreeMap<String, String>` each entry's tags took about a
//! kilobyte (a tree node and twelve strings). Most of those strings are the same few keys, and
//! values shared by all the resources of one Stack (its UID, its owner reference). Here the tags
//! are a sorted list of pairs of shared strings, taken from one process-wide set, so each entry
//! costs its list (six pairs, 192 bytes) and each distinct string is stored once.

use std::collections::HashSet;
use std::fmt;
use std::ops::Index;
use std::sync::{Arc, LazyLock, Mutex};

/// One key or value.
pub type Tag = Arc<str>;

/// Tags, sorted by key, each key once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<(Tag, Tag)>);

/// Every key and value that some `Tags` holds, so that equal strings are stored once.
static INTERNED: LazyLock<Mutex<HashSet<Tag>>> = LazyLock::new(Mutex::default);

fn intern(s: &str) -> Tag {
    let mut set = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tag) = set.get(s) {
        return tag.clone();
    }
    let tag: Tag = s.into();
    set.insert(tag.clone());
    tag
}

/// Forgets the strings that no `Tags` holds any more (those of deleted resources), so that the set
/// does not grow with the operator's history. The inventory calls it after each refresh.
pub fn forget_unused() {
    INTERNED.lock().unwrap_or_else(|p| p.into_inner()).retain(|t| Arc::strong_count(t) > 1);
}

impl Tags {
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`, replacing its value if it had one.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        match self.position(key) {
            Ok(i) if &*self.0[i].1 == value => {}
            Ok(i) => self.0[i].1 = intern(value),
            Err(i) => self.0.insert(i, (intern(key), intern(value))),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Tag> {
        self.position(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The tags as owned pairs, for the SDK calls that take a map of them.
    pub fn owned<C: FromIterator<(String, String)>>(&self) -> C {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Tags as a kind builds them or the inventory keeps them, to be given to AWS.
pub trait TagPairs {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)>;
}

impl TagPairs for Tags {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter()
    }
}

impl TagPairs for [(String, String)] {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl TagPairs for Vec<(String, String)> {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.as_slice().pairs()
    }
}

impl Tags {
    /// The tags of an EC2 resource as EC2 describes them.
    pub fn from_ec2(tags: &[aws_sdk_ec2::types::Tag]) -> Self {
        tags.iter().filter_map(|t| Some((t.key()?, t.value().unwrap_or_default()))).collect()
    }
}

/// EC2's tags (CreateTags), from a kind's or the inventory's.
pub fn ec2_tag_list(tags: &(impl TagPairs + ?Sized)) -> Vec<aws_sdk_ec2::types::Tag> {
    tags.pairs().map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build()).collect()
}

/// Tags given at creation to a resource of `resource`'s type, so that it is never without its
/// owner's UID.
pub fn ec2_tags(
    resource: aws_sdk_ec2::types::ResourceType,
    tags: &(impl TagPairs + ?Sized),
) -> aws_sdk_ec2::types::TagSpecification {
    aws_sdk_ec2::types::TagSpecification::builder().resource_type(resource).set_tags(Some(ec2_tag_list(tags))).build()
}

impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for Tags {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, pairs: I) {
        for (k, v) in pairs {
            self.insert(k, v);
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Tags {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut tags = Tags::new();
        tags.extend(pairs);
        tags.0.shrink_to_fit();
        tags
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Tags {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl Index<&str> for Tags {
    type Output = str;

    /// The value of `key`; panics if there is none (as a map's index does).
    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no tag {key:?}"),
        }
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_behave_as_a_map_sorted_by_key() {
        let mut tags = Tags::from([("b", "2"), ("a", "1"), ("b", "3")]);
        assert_eq!(tags.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "3")], "sorted, the last value wins");
        assert_eq!(tags.get("a"), Some("1"));
        assert_eq!(&tags["b"], "3");
        assert!(tags.get("c").is_none() && !tags.contains_key("c"));
        tags.insert("c", "4");
        tags.insert(String::from("a"), String::from("5"));
        assert_eq!(tags.iter().collect::<Vec<_>>(), [("a", "5"), ("b", "3"), ("c", "4")]);
        assert_eq!(tags.remove("b").as_deref(), Some("3"));
        assert_eq!(tags.remove("b"), None);
        tags.retain(|k, _| k != "a");
        assert_eq!(tags, Tags::from([("c", "4")]));
        assert_eq!(format!("{tags:?}"), r#"{"c": "4"}"#);
    }

    #[test]
    fn equal_strings_are_stored_once_and_forgotten_when_unused() {
        let key = "tinystacks.io/tags-test-key";
        let first = Tags::from([(key, "tags-test-value")]);
        let second = Tags::from([(key, "tags-test-value")]);
        let (a, b) = (&first.0[0], &second.0[0]);
        assert!(Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.1, &b.1), "one copy of each string");

        let interned = |s: &str| INTERNED.lock().unwrap().contains(s);
        drop((first, second));
        assert!(interned(key), "kept until forgotten");
        forget_unused();
        assert!(!interned(key) && !interned("tags-test-value"));
    }
}
