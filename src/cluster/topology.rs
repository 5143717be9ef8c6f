//! The slot map: which master (and which replicas) serve each slot, from `CLUSTER SLOTS`.

use redis_protocol::resp2::decode::decode as decode_resp2;
use redis_protocol::resp2::types::OwnedFrame;

use super::slot::SLOTS;

/// One node as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `host:port` (IPv6 hosts in brackets).
    pub address: String,
    pub id: String,
}

/// A range of slots and the nodes serving it, master first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: Node,
    pub replicas: Vec<Node>,
}

/// Every slot's master, as an index into `masters`.
#[derive(Debug, Clone)]
pub struct Topology {
    pub masters: Vec<Node>,
    /// `replicas[i]`: the replicas of `masters[i]` (as its first range lists them; Redis
    /// leaves out replicas it marks failed or that have not synced yet).
    replicas: Vec<Vec<Node>>,
    /// `owner[slot]`: index into `masters`, or `None` for an unassigned slot.
    owner: Vec<Option<u16>>,
    pub ranges: Vec<SlotRange>,
}

impl Topology {
    /// Reads a `CLUSTER SLOTS` reply (RESP2). `None` when it is not one.
    pub fn from_cluster_slots(reply: &[u8]) -> Option<Topology> {
        let Ok(Some((OwnedFrame::Array(entries), _))) = decode_resp2(reply) else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let OwnedFrame::Array(fields) = entry else {
                return None;
            };
            let start = u16::try_from(integer(fields.first()?)?).ok()?;
            let end = u16::try_from(integer(fields.get(1)?)?).ok()?;
            if start > end || end >= SLOTS {
                return None;
            }
            let mut nodes = fields[2..].iter().filter_map(node);
            let master = nodes.next()?;
            ranges.push(SlotRange {
                start,
                end,
                master,
                replicas: nodes.collect(),
            });
        }
        let mut masters: Vec<Node> = Vec::new();
        let mut replicas: Vec<Vec<Node>> = Vec::new();
        let mut owner = vec![None; usize::from(SLOTS)];
        for range in &ranges {
            let index = match masters
                .iter()
                .position(|m| m.address == range.master.address)
            {
                Some(i) => i,
                None => {
                    masters.push(range.master.clone());
                    replicas.push(range.replicas.clone());
                    masters.len() - 1
                }
            };
            let index = u16::try_from(index).ok()?;
            for slot in range.start..=range.end {
                owner[usize::from(slot)] = Some(index);
            }
        }
        Some(Topology {
            masters,
            replicas,
            owner,
            ranges,
        })
    }

    /// The master serving `slot`.
    /// The index in `masters` of the master serving `slot`.
    pub fn master_index(&self, slot: u16) -> Option<usize> {
        self.owner
            .get(usize::from(slot))
            .copied()
            .flatten()
            .map(usize::from)
    }

    pub fn master_of(&self, slot: u16) -> Option<&Node> {
        let index = (*self.owner.get(usize::from(slot))?)?;
        self.masters.get(usize::from(index))
    }

    /// The replicas of the master serving `slot` (empty for an unassigned slot).
    pub fn replicas_of(&self, slot: u16) -> &[Node] {
        self.owner
            .get(usize::from(slot))
            .copied()
            .flatten()
            .and_then(|index| self.replicas.get(usize::from(index)))
            .map_or(&[], Vec::as_slice)
    }

    /// Slots without a master.
    pub fn unassigned(&self) -> usize {
        self.owner.iter().filter(|o| o.is_none()).count()
    }
}

fn integer(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8(b.clone()).ok()
        }
        _ => None,
    }
}

/// `[host, port, id, ...]` → a node (an empty host means "the address you reached me on",
/// which a proxy cannot use: such entries are skipped).
fn node(frame: &OwnedFrame) -> Option<Node> {
    let OwnedFrame::Array(fields) = frame else {
        return None;
    };
    let host = text(fields.first()?)?;
    let port = u16::try_from(integer(fields.get(1)?)?).ok()?;
    if host.is_empty() || host == "?" {
        return None;
    }
    let id = fields.get(2).and_then(text).unwrap_or_default();
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some(Node { address, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_frame(host: &str, port: u16, id: &str) -> String {
        format!(
            "*3\r\n${}\r\n{host}\r\n:{port}\r\n${}\r\n{id}\r\n",
            host.len(),
            id.len()
        )
    }

    #[test]
    fn reads_cluster_slots() {
        let reply = format!(
            "*3\r\n*4\r\n:0\r\n:5460\r\n{}{}*3\r\n:5461\r\n:10922\r\n{}\
             *3\r\n:10923\r\n:16383\r\n{}",
            node_frame("127.0.0.1", 7000, "a"),
            node_frame("127.0.0.1", 7003, "d"),
            node_frame("127.0.0.1", 7001, "b"),
            node_frame("::1", 7002, "c"),
        );
        let topology = Topology::from_cluster_slots(reply.as_bytes());
        let Some(topology) = topology else {
            panic!("not read");
        };
        assert_eq!(topology.masters.len(), 3);
        assert_eq!(topology.unassigned(), 0);
        let master = |slot| topology.master_of(slot).map(|n| n.address.as_str());
        assert_eq!(master(0), Some("127.0.0.1:7000"));
        assert_eq!(master(5460), Some("127.0.0.1:7000"));
        assert_eq!(master(5461), Some("127.0.0.1:7001"));
        assert_eq!(master(16383), Some("[::1]:7002"));
        assert_eq!(topology.ranges[0].replicas[0].address, "127.0.0.1:7003");
        let replicas = |slot| {
            topology
                .replicas_of(slot)
                .iter()
                .map(|n| n.address.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(replicas(0), ["127.0.0.1:7003"]);
        assert_eq!(replicas(5460), ["127.0.0.1:7003"]);
        assert!(replicas(5461).is_empty());
        assert!(replicas(16383).is_empty());
    }

    #[test]
    fn gaps_and_garbage() {
        let reply = format!("*1\r\n*3\r\n:0\r\n:99\r\n{}", node_frame("h", 1, "x"));
        let topology = Topology::from_cluster_slots(reply.as_bytes());
        assert_eq!(topology.as_ref().map(|t| t.replicas_of(100).len()), Some(0));
        assert_eq!(topology.map(|t| t.unassigned()), Some(16384 - 100));
        assert!(
            Topology::from_cluster_slots(b"-ERR This instance has cluster support disabled\r\n")
                .is_none()
        );
        let inverted = format!("*1\r\n*3\r\n:9\r\n:1\r\n{}", node_frame("h", 1, "x"));
        assert!(Topology::from_cluster_slots(inverted.as_bytes()).is_none());
    }
}
