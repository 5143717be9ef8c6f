//! Cluster mode: the commands no single node can answer, answered by several. Which
//! commands those are, and how their replies combine, is data in the command table
//! ([`command::spread`]):
//!
//! - keys in several slots: MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are split by slot,
//!   sent to their masters together, and merged in key order with the reply shape of one
//!   Redis (MGET's array, MSET's `+OK`, the others' sum);
//! - keyless commands that concern the whole data set run on every master: DBSIZE (summed),
//!   KEYS (concatenated), FLUSHALL/FLUSHDB, SCRIPT LOAD/FLUSH, FUNCTION LOAD/FLUSH/DELETE
//!   (one reply when all agree, else the first error), SCAN (one master after the other).
//!
//! With `read_from_replicas`, the parts of a split read (MGET, EXISTS, TOUCH) go to
//! replicas, their masters answering when a replica cannot.
//!
//! This module answers; it does not decide that a command needs it (the session's routing
//! does) and it keeps no client state.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::router::Cluster;
use super::slot::slot;
use crate::command::{self, Merge, Spread};
use crate::protocol::reply::split_array;
use crate::protocol::{Request, encode};
use crate::replies;
use crate::upstream::{ConnState, LostReason, UnavailableReason, Upstream, UpstreamError};

/// SCAN walks the masters one after the other: the client's cursor carries the master's
/// index in its low `SCAN_NODE_BITS` bits and that master's own cursor above them. A
/// master's cursor of 0 moves on to the next master; after the last, the cursor is 0. Keys
/// that move between masters during a scan may be missed or returned twice (Redis Cluster
/// clients that scan node by node have the same caveat).
const SCAN_NODE_BITS: u32 = 10;

/// One sub-request: the node it goes to (and, for a read sent to a replica, the master
/// that answers when the replica cannot), its bytes, and which of the original keys (or
/// nodes, for a fan-out) its reply covers.
struct Part {
    node: Arc<Upstream>,
    fallback: Option<Arc<Upstream>>,
    request: Bytes,
    covers: Vec<usize>,
}

/// Answers `request` from several nodes: the merged reply, as one Redis would send it.
pub async fn scatter(
    cluster: &Arc<Cluster>,
    request: &Request,
    state: ConnState,
) -> Result<Vec<u8>, UpstreamError> {
    let (merge, parts, keys) = match command::spread(&request.args) {
        Some(Spread::EveryMaster(Merge::Scan)) => return scan(cluster, request, state).await,
        Some(Spread::BySlot { merge, width }) => {
            let args = &request.args;
            if args.len() < 2 || (args.len() - 1) % width != 0 {
                // MSET with a key and no value: Redis's arity error, not a split.
                let mut out = BytesMut::new();
                let name = String::from_utf8_lossy(request.name()).to_ascii_lowercase();
                replies::wrong_arity(&mut out, &name);
                return Ok(out.to_vec());
            }
            let (parts, keys) = by_slot(cluster, args, width).await?;
            (merge, parts, keys)
        }
        Some(Spread::EveryMaster(merge)) => {
            let parts = every_master(cluster, &request.args).await?;
            let n = parts.len();
            (merge, parts, n)
        }
        None => {
            return Err(UnavailableReason::NoSplitRule.into());
        }
    };
    let replies = gather(cluster, &parts, state).await?;
    // Any error is the answer, as one Redis would give its first.
    if let Some(error) = replies.iter().find(|r| r.first() == Some(&b'-')) {
        return Ok(error.to_vec());
    }
    merge_replies(merge, &parts, &replies, keys)
        .ok_or_else(|| UnavailableReason::Unmergeable.into())
}

/// The parts of a command split by slot (keys of one slot together, in their order), and
/// how many keys it has.
async fn by_slot(
    cluster: &Arc<Cluster>,
    args: &[Bytes],
    width: usize,
) -> Result<(Vec<Part>, usize), UpstreamError> {
    let keys = (args.len() - 1) / width;
    let readonly = cluster.reads_from_replicas() && cluster.keys().is_readonly(&[&args[0]]);
    // Keys of one slot go together, in their order.
    let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
    for key in 0..keys {
        let s = slot(&args[1 + key * width]);
        match by_slot.iter_mut().find(|(slot, _)| *slot == s) {
            Some((_, list)) => list.push(key),
            None => by_slot.push((s, vec![key])),
        }
    }
    let mut parts = Vec::with_capacity(by_slot.len());
    for (s, covers) in by_slot {
        let mut sub: Vec<&[u8]> = vec![&args[0]];
        for &key in &covers {
            for a in &args[1 + key * width..1 + (key + 1) * width] {
                sub.push(a);
            }
        }
        let (node, fallback) = if readonly {
            cluster.route_read(s, None).await?
        } else {
            (cluster.route(s).await?, None)
        };
        parts.push(Part {
            node,
            fallback,
            request: encode::command(&sub),
            covers,
        });
    }
    Ok((parts, keys))
}

/// The same request for every master, in the masters' order.
async fn every_master(cluster: &Arc<Cluster>, args: &[Bytes]) -> Result<Vec<Part>, UpstreamError> {
    let bytes = encode::command(args);
    let masters = cluster.masters().await?;
    Ok(masters
        .into_iter()
        .enumerate()
        .map(|(i, node)| Part {
            node,
            fallback: None,
            request: bytes.clone(),
            covers: vec![i],
        })
        .collect())
}

/// Every part at once, each on its node's lanes (redirects followed one by one); the
/// replies in the parts' order.
async fn gather(
    cluster: &Arc<Cluster>,
    parts: &[Part],
    state: ConnState,
) -> Result<Vec<Bytes>, UpstreamError> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, part) in parts.iter().enumerate() {
        let (node, fallback) = (part.node.clone(), part.fallback.clone());
        let request = part.request.clone();
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let reply = cluster
                .call(&node, fallback.as_ref(), &request, state)
                .await?;
            Ok::<_, UpstreamError>((index, reply.0))
        });
    }
    let mut replies: Vec<Option<Bytes>> = vec![None; parts.len()];
    while let Some(done) = tasks.join_next().await {
        let (index, reply) = done.map_err(|e| LostReason::SubRequestFailed {
            detail: e.to_string().into(),
        })??;
        replies[index] = Some(reply);
    }
    let replies: Vec<Bytes> = replies.into_iter().flatten().collect();
    if replies.len() != parts.len() {
        return Err(LostReason::SubRequestUnanswered.into());
    }
    Ok(replies)
}

/// One step of a cluster-wide SCAN (see `SCAN_NODE_BITS`).
async fn scan(
    cluster: &Arc<Cluster>,
    request: &Request,
    state: ConnState,
) -> Result<Vec<u8>, UpstreamError> {
    let Some(cursor) = std::str::from_utf8(&request.args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Ok(replies::INVALID_CURSOR.to_vec());
    };
    let masters = cluster.masters().await?;
    let index = (cursor & ((1 << SCAN_NODE_BITS) - 1)) as usize;
    let node_cursor = cursor >> SCAN_NODE_BITS;
    let Some(node) = masters.get(index) else {
        // A cursor from before the cluster shrank: the scan is over.
        return Ok(b"*2\r\n$1\r\n0\r\n*0\r\n".to_vec());
    };
    let mut args: Vec<Bytes> = request.args.clone();
    args[1] = Bytes::from(node_cursor.to_string());
    let mut replies = node.call(state, vec![encode::command(&args)], 1).await?;
    let reply = replies
        .pop()
        .ok_or_else(|| UpstreamError::from(LostReason::NoReply))?
        .0;
    if reply.first() == Some(&b'-') {
        return Ok(reply.to_vec());
    }
    let parts = split_array(&reply)
        .filter(|p| p.len() == 2)
        .ok_or_else(|| UpstreamError::from(UnavailableReason::ScanReplyNotUnderstood))?;
    let next: u64 = std::str::from_utf8(&parts[0])
        .ok()
        .and_then(|line| line.lines().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| UpstreamError::from(UnavailableReason::ScanCursorNotUnderstood))?;
    let next = match (next, index + 1 < masters.len()) {
        (0, true) => (index + 1) as u64,
        (0, false) => 0,
        (n, _) if n >> (64 - SCAN_NODE_BITS) != 0 => {
            return Err(UnavailableReason::ScanCursorTooLarge.into());
        }
        (n, _) => (n << SCAN_NODE_BITS) | index as u64,
    };
    let mut out = BytesMut::new();
    encode::array_header(&mut out, 2);
    encode::bulk(&mut out, next.to_string().as_bytes());
    out.extend_from_slice(&parts[1]);
    Ok(out.to_vec())
}

fn merge_replies(merge: Merge, parts: &[Part], replies: &[Bytes], keys: usize) -> Option<Vec<u8>> {
    let mut out = BytesMut::new();
    match merge {
        Merge::Sum => {
            let mut sum: i64 = 0;
            for reply in replies {
                let text =
                    std::str::from_utf8(reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?).ok()?;
                sum = sum.checked_add(text.parse().ok()?)?;
            }
            encode::integer(&mut out, sum);
        }
        Merge::Scan => return None,
        Merge::Agree => {
            let first = replies.first()?;
            if replies.iter().any(|r| r != first) {
                return None;
            }
            out.extend_from_slice(first);
        }
        Merge::Elements => {
            let mut slots: Vec<Option<Bytes>> = vec![None; keys];
            for (part, reply) in parts.iter().zip(replies) {
                let elements = split_array(reply)?;
                if elements.len() != part.covers.len() {
                    return None;
                }
                for (&key, element) in part.covers.iter().zip(elements) {
                    slots[key] = Some(element);
                }
            }
            encode::array_header(&mut out, keys);
            for element in slots {
                out.extend_from_slice(&element?);
            }
        }
        Merge::Concat => {
            let mut all = Vec::new();
            for reply in replies {
                all.extend(split_array(reply)?);
            }
            encode::array_header(&mut out, all.len());
            for element in all {
                out.extend_from_slice(&element);
            }
        }
    }
    Some(out.to_vec())
}
