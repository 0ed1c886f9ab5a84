//! The cluster's slot map, read from `CLUSTER SLOTS`.

use redis_protocol::resp2::types::OwnedFrame;

use super::{node_addr, RedisError};

/// Number of hash slots in a Redis Cluster.
const SLOTS: usize = 16384;
/// Marks a slot that no master serves.
const NO_MASTER: u16 = u16::MAX;

pub(super) struct SlotMap {
    /// `owner[slot]`: index into `masters`, or `NO_MASTER`.
    owner: Vec<u16>,
    /// The masters' `host:port`.
    pub(super) masters: Vec<String>,
    /// Every node named in the map, masters and replicas: where to read the
    /// next map from once this one is stale.
    pub(super) nodes: Vec<String>,
}

impl SlotMap {
    /// Builds the map from a `CLUSTER SLOTS` reply given by the node at
    /// `queried_host` (an empty or null endpoint means that host).
    pub(super) fn parse(reply: OwnedFrame, queried_host: &str) -> Result<SlotMap, RedisError> {
        let bad = |why: &str| RedisError::Protocol(format!("CLUSTER SLOTS: {why}"));
        let ranges = match reply {
            OwnedFrame::Array(ranges) => ranges,
            OwnedFrame::Error(e) => return Err(bad(&e)),
            _ => return Err(bad("not an array")),
        };
        let mut map = SlotMap {
            owner: vec![NO_MASTER; SLOTS],
            masters: Vec::new(),
            nodes: Vec::new(),
        };
        for range in ranges {
            let OwnedFrame::Array(fields) = range else {
                return Err(bad("a range is not an array"));
            };
            let mut fields = fields.into_iter();
            let (Some(OwnedFrame::Integer(lo)), Some(OwnedFrame::Integer(hi))) =
                (fields.next(), fields.next())
            else {
                return Err(bad("a range without bounds"));
            };
            let (lo, hi) = match (usize::try_from(lo), usize::try_from(hi)) {
                (Ok(lo), Ok(hi)) if lo <= hi && hi < SLOTS => (lo, hi),
                _ => return Err(bad("a range out of bounds")),
            };
            let mut endpoints = fields.map(|node| endpoint(node, queried_host));
            let master = endpoints
                .next()
                .ok_or_else(|| bad("a range without master"))??;
            let index = match map.masters.iter().position(|m| *m == master) {
                Some(i) => i,
                None => {
                    map.masters.push(master.clone());
                    map.masters.len() - 1
                }
            };
            map.owner[lo..=hi].fill(index as u16);
            for node in std::iter::once(Ok(master)).chain(endpoints) {
                let node = node?;
                if !map.nodes.contains(&node) {
                    map.nodes.push(node);
                }
            }
        }
        Ok(map)
    }

    /// The index (into `masters`) of the master serving `slot`.
    pub(super) fn owner(&self, slot: u16) -> Result<usize, RedisError> {
        match self.owner.get(usize::from(slot)) {
            Some(&i) if i != NO_MASTER => Ok(usize::from(i)),
            _ => Err(RedisError::ClusterDown(format!(
                "slot {slot} has no master in the slot map"
            ))),
        }
    }
}

/// `host:port` of one `[endpoint, port, id, ...]` entry.
fn endpoint(node: OwnedFrame, queried_host: &str) -> Result<String, RedisError> {
    let bad = || RedisError::Protocol("CLUSTER SLOTS: bad node entry".into());
    let OwnedFrame::Array(fields) = node else {
        return Err(bad());
    };
    let mut fields = fields.into_iter();
    let host = match fields.next() {
        Some(OwnedFrame::BulkString(h)) if !h.is_empty() => {
            String::from_utf8(h).map_err(|_| bad())?
        }
        Some(OwnedFrame::BulkString(_)) | Some(OwnedFrame::Null) => queried_host.to_string(),
        _ => return Err(bad()),
    };
    match fields.next() {
        Some(OwnedFrame::Integer(port)) => {
            let port = u16::try_from(port).map_err(|_| bad())?;
            Ok(node_addr(&host, port))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> OwnedFrame {
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(host.as_bytes().to_vec()),
            OwnedFrame::Integer(port),
            OwnedFrame::BulkString(b"id".to_vec()),
        ])
    }

    fn range(lo: i64, hi: i64, nodes: Vec<OwnedFrame>) -> OwnedFrame {
        let mut f = vec![OwnedFrame::Integer(lo), OwnedFrame::Integer(hi)];
        f.extend(nodes);
        OwnedFrame::Array(f)
    }

    #[test]
    fn parses_ranges_and_finds_owners() {
        let reply = OwnedFrame::Array(vec![
            range(0, 99, vec![node("10.0.0.1", 7000), node("10.0.0.2", 7001)]),
            range(100, 16383, vec![node("", 7002)]),
        ]);
        let map = SlotMap::parse(reply, "seed").unwrap();
        assert_eq!(map.masters, vec!["10.0.0.1:7000", "seed:7002"]);
        assert_eq!(
            map.nodes,
            vec!["10.0.0.1:7000", "10.0.0.2:7001", "seed:7002"]
        );
        assert_eq!(map.owner(99).unwrap(), 0);
        assert_eq!(map.owner(100).unwrap(), 1);
        assert!(matches!(map.owner(16384), Err(RedisError::ClusterDown(_))));
    }

    #[test]
    fn uncovered_slots_and_bad_replies() {
        let map = SlotMap::parse(
            OwnedFrame::Array(vec![range(5, 5, vec![node("h", 1)])]),
            "s",
        )
        .unwrap();
        assert!(matches!(map.owner(4), Err(RedisError::ClusterDown(_))));
        for reply in [
            OwnedFrame::Integer(1),
            OwnedFrame::Error("ERR This instance has cluster support disabled".into()),
            OwnedFrame::Array(vec![range(10, 5, vec![node("h", 1)])]),
            OwnedFrame::Array(vec![range(0, 16384, vec![node("h", 1)])]),
            OwnedFrame::Array(vec![range(0, 1, vec![])]),
            OwnedFrame::Array(vec![range(0, 1, vec![node("h", 70000)])]),
        ] {
            assert!(
                matches!(
                    SlotMap::parse(reply.clone(), "s"),
                    Err(RedisError::Protocol(_))
                ),
                "{reply:?}"
            );
        }
    }
}
