//! Where in a YAML text a field path is, for error messages. serde_norway
//! positions an error raised inside a visitor (a duplicate key, a number
//! pbjson cannot read) at the enclosing mapping, or not at all at the top
//! level; the path from `serde_path_to_error` is exact. So the text is read
//! a second time, walking only that path, and the node there (or the
//! repeated key) fails on purpose: serde_norway then reports the position of
//! exactly that node.
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_path_to_error::Segment;

const HERE: &str = "hostplane: located";

/// The (line, column) of the node at `path` in `text`, or with `repeated`,
/// of the second occurrence of that key in the mapping at `path`.
pub fn locate(text: &str, path: &[Segment], repeated: Option<&str>) -> Option<(usize, usize)> {
    let de = serde_norway::Deserializer::from_str(text);
    match (Walk { path, repeated }).deserialize(de) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

struct Walk<'p> {
    path: &'p [Segment],
    repeated: Option<&'p str>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Fails on purpose on every kind of node.
macro_rules! here {
    ($($f:ident: $t:ty),*) => {
        $(fn $f<E: de::Error>(self, _: $t) -> Result<(), E> {
            self.done()
        })*
    };
}

impl Walk<'_> {
    fn done<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() && self.repeated.is_none() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    here!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.done()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.done()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.done()?;
        let mut seen = 0;
        while let Some(key) = map.next_key_seed(Key {
            repeated: if self.path.is_empty() { self.repeated } else { None },
            seen: &mut seen,
        })? {
            match self.path.first() {
                Some(Segment::Map { key: k }) if *k == key => {
                    return map.next_value_seed(Walk {
                        path: &self.path[1..],
                        repeated: self.repeated,
                    });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.done()?;
        let Some(Segment::Seq { index }) = self.path.first() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        for _ in 0..*index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Walk {
            path: &self.path[1..],
            repeated: self.repeated,
        })?;
        Ok(())
    }
}

/// A mapping key; fails on purpose on the second occurrence of `repeated`.
struct Key<'a> {
    repeated: Option<&'a str>,
    seen: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        // `num_vfs` and `numVfs` are one field (proto3 JSON accepts both).
        let same = |a: &str, b: &str| a.replace('_', "").eq_ignore_ascii_case(&b.replace('_', ""));
        if self.repeated.is_some_and(|r| same(r, v)) {
            *self.seen += 1;
            if *self.seen == 2 {
                return Err(E::custom(HERE));
            }
        }
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Segment {
        Segment::Map { key: k.into() }
    }

    #[test]
    fn nodes_and_repeated_keys_are_found() {
        let text = "mtu: 1\nbridges:\n  - name: a\n  - name: b\n    mtu: x\n    mtu: y\nbridges: []\n";
        assert_eq!(locate(text, &[key("mtu")], None), Some((1, 6)));
        assert_eq!(locate(text, &[], Some("bridges")), Some((7, 1)));
        let b1 = [key("bridges"), Segment::Seq { index: 1 }];
        assert_eq!(
            locate(text, &[&b1[..], &[key("mtu")]].concat(), None),
            Some((5, 10))
        );
        assert_eq!(locate(text, &b1, Some("mtu")), Some((6, 5)));
        assert_eq!(locate(text, &[key("routes")], None), None, "not there");
        assert_eq!(locate(text, &[], Some("mtu")), None, "once only");
        let flow = "{bridges: [{name: a, ports: spare0}]}";
        let p = [key("bridges"), Segment::Seq { index: 0 }, key("ports")];
        assert_eq!(locate(flow, &p, None), Some((1, 29)));
    }
}
