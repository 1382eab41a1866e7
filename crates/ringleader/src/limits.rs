//! Every size the cluster's messages and log entries can reach, and the
//! checks that keep them there.
//!
//! A peer frame may be at most the configured `max_frame` (8 MiB by
//! default), and a replicated entry that could not be carried by any frame
//! would stop the log for good. So every field a peer or an operator gives
//! is bounded ([`check_info`], [`MAX_NAME_BYTES`]), every log entry is at
//! most [`MAX_ENTRY_BYTES`] (partition ops are split into entries of at most
//! [`MAX_OP_PARTITIONS`] partitions), a replication batch holds at most
//! [`max_payload_entries`] entries, and a member's catch-up update is a
//! delta only while it fits [`update_bound`], a snapshot otherwise. The
//! snapshot itself is bounded by the member cap ([`MAX_MEMBERS`]) and the
//! partition count; [`crate::NodeConfig::validate`] refuses a frame limit
//! below [`update_bound`] for the configured number of partitions.

use crate::types::NodeInfo;

/// The longest node name, address or cluster name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The most members one cluster admits; a join beyond it is refused.
pub const MAX_MEMBERS: usize = 4096;

/// The most partitions one partition-table entry changes; larger changes
/// are split into several entries.
pub const MAX_OP_PARTITIONS: usize = 4096;

/// The largest encoded log entry, in bytes. The largest possible entry, a
/// grant of [`MAX_OP_PARTITIONS`] partitions to ids of 10 varint bytes, is
/// about 53 KiB; a member entry about 800 bytes.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// Room in a frame for everything around its entries or state.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// Encoded bytes of one member row at most: id, three bounded strings,
/// role and index.
const MEMBER_BYTES: usize = 10 + 3 * (MAX_NAME_BYTES + 3) + 1 + 10 + 8;

/// Encoded bytes of one partition slot at most: owner, state, token.
const SLOT_BYTES: usize = 11 + 1 + 10;

/// Encoded bytes of one (partition, token) or (partition, id) pair at most.
const PAIR_BYTES: usize = 5 + 10;

/// How many entries one AppendEntries may carry so that it fits a frame of
/// `max_frame` bytes (at most openraft's default of 300).
pub fn max_payload_entries(max_frame: usize) -> u64 {
    let fit = max_frame.saturating_sub(ENVELOPE_BYTES) / MAX_ENTRY_BYTES;
    fit.clamp(1, 300) as u64
}

/// The largest encoded cluster state (a member's snapshot) with `partitions`
/// partitions and at most [`MAX_MEMBERS`] members.
pub fn snapshot_bound(partitions: u32) -> usize {
    ENVELOPE_BYTES + MAX_MEMBERS * MEMBER_BYTES + partitions as usize * SLOT_BYTES
}

/// The largest heartbeat answer with `partitions` partitions: a snapshot
/// (or a delta no larger), the member's revocations and the suspects.
pub fn update_bound(partitions: u32) -> usize {
    snapshot_bound(partitions) + partitions as usize * PAIR_BYTES + MAX_MEMBERS * 10
}

/// The delta budget: a member further behind than this many encoded bytes
/// of entries gets a snapshot instead.
pub fn delta_budget(partitions: u32) -> usize {
    snapshot_bound(partitions)
}

/// The smallest frame limit a cluster of `partitions` partitions can run
/// with: every entry batch and every catch-up update fits in it.
pub fn min_frame(partitions: u32) -> usize {
    update_bound(partitions).max(ENVELOPE_BYTES + MAX_ENTRY_BYTES)
}

/// Why a name or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Empty or longer than [`MAX_NAME_BYTES`].
    #[error("{field}: must be 1 to {MAX_NAME_BYTES} bytes (got {len})")]
    Length {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// Holds a control character.
    #[error("{field}: must not contain control characters")]
    Control {
        /// Which field.
        field: &'static str,
    },
    /// Not `HOST:PORT`.
    #[error("{field}: must be HOST:PORT with a port from 1 to 65535")]
    Address {
        /// Which field.
        field: &'static str,
    },
}

impl FieldError {
    /// The field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            FieldError::Length { field, .. }
            | FieldError::Control { field }
            | FieldError::Address { field } => field,
        }
    }

    /// What is wrong with it, without the field's name.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        let prefix = format!("{}: ", self.field());
        text.strip_prefix(&prefix).unwrap_or(&text).to_string()
    }
}

/// Checks a name (node or cluster): 1 to [`MAX_NAME_BYTES`] bytes, no
/// control characters.
pub fn check_name(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES {
        return Err(FieldError::Length {
            field,
            len: value.len(),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::Control { field });
    }
    Ok(())
}

/// Checks an address: a name as [`check_name`] that ends in `:PORT`
/// (1-65535) after a non-empty host.
pub fn check_addr(field: &'static str, value: &str) -> Result<(), FieldError> {
    check_host_port(field, value, false)
}

/// Checks an address to listen on: as [`check_addr`], but port 0 (any
/// free port) is allowed.
pub fn check_listen(field: &'static str, value: &str) -> Result<(), FieldError> {
    check_host_port(field, value, true)
}

fn check_host_port(field: &'static str, value: &str, any_port: bool) -> Result<(), FieldError> {
    check_name(field, value)?;
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(FieldError::Address { field });
    };
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0 || any_port);
    if host.is_empty() || !port_ok || host.contains(char::is_whitespace) {
        return Err(FieldError::Address { field });
    }
    Ok(())
}

/// Checks every field of a node's description.
pub fn check_info(info: &NodeInfo) -> Result<(), FieldError> {
    check_name("name", &info.name)?;
    check_addr("addr", &info.addr)?;
    if let Some(http) = &info.http_addr {
        check_addr("http_addr", http)?;
    }
    Ok(())
}

/// `text` made safe to log: control characters escaped, at most `max`
/// bytes of it kept (cut at a character boundary), with the original
/// length noted when it was cut.
pub fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end].escape_debug().collect();
    if end < text.len() {
        out.push_str(&format!("... ({} bytes)", text.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::PartitionOp;
    use crate::state::{ClusterIdentity, ClusterState, Command, Member};
    use crate::types::Role;

    fn widest_info(c: char) -> NodeInfo {
        let s = |tail: &str| {
            let mut s: String = std::iter::repeat_n(c, MAX_NAME_BYTES - tail.len()).collect();
            s.push_str(tail);
            s
        };
        NodeInfo {
            name: s(""),
            addr: s(":65535"),
            http_addr: Some(s(":65535")),
        }
    }

    #[test]
    fn names_and_addresses_are_bounded() {
        assert!(check_info(&widest_info('h')).is_ok());
        let mut long = widest_info('h');
        long.name.push('x');
        assert!(matches!(
            check_info(&long),
            Err(FieldError::Length { field: "name", .. })
        ));
        for bad in [
            "", "nowhere", "h:", ":7000", "h:0", "h:65536", "h:+1", "a b:1",
        ] {
            assert!(check_addr("addr", bad).is_err(), "{bad:?}");
        }
        for good in ["h:1", "10.0.0.1:7000", "[::1]:7000", "node-1.svc:65535"] {
            assert!(check_addr("addr", good).is_ok(), "{good:?}");
        }
        assert!(check_name("name", "a\nb").is_err());
    }

    #[test]
    fn a_listen_address_may_ask_for_any_port() {
        assert!(check_listen("listen", "127.0.0.1:0").is_ok());
        assert!(check_addr("advertise", "127.0.0.1:0").is_err());
    }

    #[test]
    fn clip_escapes_and_cuts_at_a_char_boundary() {
        assert_eq!(clip("a\nb", 10), "a\\nb");
        let cut = clip("ééé", 3);
        assert!(cut.starts_with('é') && cut.ends_with("(6 bytes)"), "{cut}");
    }

    #[test]
    fn the_widest_entries_fit_the_entry_limit() {
        let grant = Command::Partitions(PartitionOp::Grant(
            (0..MAX_OP_PARTITIONS as u32)
                .map(|p| (u32::MAX - p, u64::MAX))
                .collect(),
        ));
        let member = Command::AddMember {
            id: u64::MAX,
            info: widest_info('h'),
            incarnation: u64::MAX,
        };
        for command in [grant, member] {
            let bytes = postcard::experimental::serialized_size(&command).unwrap();
            assert!(bytes <= MAX_ENTRY_BYTES - 64, "{bytes}");
        }
    }

    #[test]
    fn the_widest_snapshot_fits_its_bound() {
        let partitions = crate::partitioner::MAX_PARTITIONS;
        let mut state = ClusterState {
            identity: Some(ClusterIdentity {
                name: "c".repeat(MAX_NAME_BYTES),
                created_secs: u32::MAX,
                num_partitions: partitions,
            }),
            ..ClusterState::default()
        };
        state.partitions = crate::partitions::PartitionTable::new(partitions);
        let grants: Vec<(u32, u64)> = (0..partitions).map(|p| (p, u64::MAX - 1)).collect();
        for i in 0..MAX_MEMBERS as u64 {
            state.members.insert(
                u64::MAX - i,
                Member {
                    info: widest_info('m'),
                    role: Role::Member,
                    joined_index: u64::MAX,
                    admitted: u64::MAX,
                    incarnation: u64::MAX,
                },
            );
        }
        let members = [u64::MAX - 1].into_iter().collect();
        state
            .partitions
            .apply(u64::MAX, &PartitionOp::Grant(grants), &members);
        state.index = u64::MAX;
        let bytes = postcard::experimental::serialized_size(&state).unwrap();
        assert!(bytes <= snapshot_bound(partitions), "{bytes}");
        assert!(update_bound(partitions) <= crate::transport::codec::DEFAULT_MAX_FRAME);
    }

    #[test]
    fn a_full_batch_fits_the_frame() {
        for frame in [
            min_frame(1),
            crate::transport::codec::DEFAULT_MAX_FRAME,
            1 << 28,
        ] {
            let n = max_payload_entries(frame) as usize;
            assert!(
                n * MAX_ENTRY_BYTES + ENVELOPE_BYTES <= frame,
                "{frame}: {n}"
            );
        }
    }
}
