//! Frames and message encoding.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! payload; the payload is one `postcard`-encoded message. Frames longer than
//! the connection's current maximum are refused before their payload is read,
//! and nothing is allocated from a declared length: the read buffer grows
//! only with bytes that actually arrived. A connection starts with the small
//! [`HANDSHAKE_MAX_FRAME`] and is raised to the configured maximum only once
//! the peer is authenticated ([`FrameCodec::set_max_frame`]). Frames larger
//! than [`BUDGETED_FRAME`] also need room in a node-wide [`FrameBudget`]
//! while they are being received, so many peers sending large frames at once
//! cannot exhaust memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::error::TransportError;

/// Default maximum frame size: 8 MiB. Every message a node sends fits in it
/// by construction: log entries, replication batches and member catch-up
/// updates are bounded (see [`crate::limits`]), and Raft snapshots are sent
/// in chunks of at most 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// The largest frame accepted before the handshake has authenticated the
/// peer: a handshake message is well under 1 KiB.
pub const HANDSHAKE_MAX_FRAME: usize = 4 * 1024;

/// Frames up to this size are received without asking the [`FrameBudget`].
pub const BUDGETED_FRAME: usize = 64 * 1024;

/// Default node-wide budget for large frames being received at once.
pub const DEFAULT_FRAME_BUDGET: usize = 64 * 1024 * 1024;

const HEAD: usize = 4;

/// A byte stream split into frames.
pub type FramedStream<S> = Framed<S, FrameCodec>;

/// How many bytes of large frames one node may be receiving at once, shared
/// by all its connections. A frame that does not fit closes its connection.
#[derive(Debug)]
pub struct FrameBudget {
    limit: usize,
    used: AtomicUsize,
}

impl FrameBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes currently taken.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "frame budget returned more than it lent");
    }
}

/// The frame codec: a 4-byte big-endian length, then the payload.
///
/// Unlike `tokio_util`'s length-delimited codec it never reserves buffer
/// space for a declared length (a stranger could declare 8 MiB on a
/// thousand connections and send nothing), its limit can be raised after
/// the handshake, and a connection that ends after a frame's length prefix
/// but before its payload is reported as truncated, not as a clean close.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame: usize,
    budget: Option<Arc<FrameBudget>>,
    /// The declared length of the frame being received, once its head is read.
    pending: Option<usize>,
    /// Bytes of the budget this connection holds for `pending`.
    held: usize,
}

impl FrameCodec {
    /// A codec refusing frames over `max_frame`, taking large frames from
    /// `budget` when one is given.
    pub fn new(max_frame: usize, budget: Option<Arc<FrameBudget>>) -> Self {
        Self {
            max_frame,
            budget,
            pending: None,
            held: 0,
        }
    }

    /// Changes the largest frame accepted from now on.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The largest frame accepted now.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn release(&mut self) {
        if let Some(budget) = &self.budget {
            if self.held > 0 {
                budget.give_back(self.held);
            }
        }
        self.held = 0;
    }

    fn invalid(message: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, message)
    }

    /// Reads a frame head from `buf`, checking the declared length.
    fn head(&mut self, buf: &mut BytesMut) -> Result<Option<usize>, std::io::Error> {
        if let Some(len) = self.pending {
            return Ok(Some(len));
        }
        if buf.len() < HEAD {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_frame {
            return Err(Self::invalid(format!(
                "frame of {len} bytes is over the limit of {}",
                self.max_frame
            )));
        }
        if len > BUDGETED_FRAME {
            if let Some(budget) = &self.budget {
                if !budget.take(len) {
                    return Err(Self::invalid(format!(
                        "frame of {len} bytes does not fit the node's frame budget now"
                    )));
                }
                self.held = len;
            }
        }
        buf.advance(HEAD);
        self.pending = Some(len);
        Ok(Some(len))
    }
}

impl Drop for FrameCodec {
    fn drop(&mut self) {
        self.release();
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let Some(len) = self.head(buf)? else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        self.pending = None;
        self.release();
        Ok(Some(buf.split_to(len)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if self.pending.is_some() || !buf.is_empty() => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a frame",
            )),
            None => Ok(None),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        // Our own frames obey the limit we ask of peers: a message that
        // outgrew it is a bug here, not something to send.
        let len = u32::try_from(item.len())
            .ok()
            .filter(|len| *len as usize <= self.max_frame)
            .ok_or_else(|| {
                Self::invalid(format!(
                    "frame of {} bytes is over the limit of {}",
                    item.len(),
                    self.max_frame
                ))
            })?;
        dst.reserve(HEAD + item.len());
        dst.extend_from_slice(&len.to_be_bytes());
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Wraps `stream` in the frame codec with the given maximum payload size and
/// no budget (for the connecting side, whose peers it chose).
pub fn framed<S: AsyncRead + AsyncWrite>(stream: S, max_frame: usize) -> FramedStream<S> {
    Framed::new(stream, FrameCodec::new(max_frame, None))
}

/// Wraps `stream` in the frame codec, taking large frames from `budget`.
pub fn framed_with_budget<S: AsyncRead + AsyncWrite>(
    stream: S,
    max_frame: usize,
    budget: Arc<FrameBudget>,
) -> FramedStream<S> {
    Framed::new(stream, FrameCodec::new(max_frame, Some(budget)))
}

/// Encodes one message into a frame payload.
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, TransportError> {
    postcard::to_stdvec(message)
        .map(Bytes::from)
        .map_err(|e| TransportError::Encode(e.to_string()))
}

/// Decodes one frame payload; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TransportError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(TransportError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(TransportError::Malformed(e.to_string())),
    }
}

/// Sends one message as one frame.
pub async fn send<S, T>(framed: &mut FramedStream<S>, message: &T) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(message)?;
    framed.send(bytes).await.map_err(frame_error)
}

/// Receives one frame and decodes it. `Ok(None)` means the peer closed the
/// connection cleanly between frames.
pub async fn recv<S, T>(framed: &mut FramedStream<S>) -> Result<Option<T>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    match framed.next().await {
        None => Ok(None),
        Some(Ok(payload)) => decode::<T>(&payload).map(Some),
        Some(Err(e)) => Err(frame_error(e)),
    }
}

/// Receives one frame, treating a closed connection as an error.
pub async fn recv_required<S, T>(framed: &mut FramedStream<S>) -> Result<T, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    recv(framed).await?.ok_or(TransportError::Closed)
}

fn frame_error(e: std::io::Error) -> TransportError {
    // FrameCodec reports oversized frames as InvalidData and a connection
    // cut mid-frame as UnexpectedEof.
    match e.kind() {
        std::io::ErrorKind::InvalidData => TransportError::Malformed(e.to_string()),
        std::io::ErrorKind::UnexpectedEof => {
            TransportError::Malformed(format!("truncated frame: {e}"))
        }
        _ => TransportError::Io(e.to_string()),
    }
}

/// Encodes a frame by hand (length prefix + payload), for tests and tools.
pub fn raw_frame(payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HeartbeatOutcome, Request, Response, Update};
    use crate::state::{ClusterState, Command};
    use crate::types::NodeInfo;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn round_trip_requests() {
        let reqs = vec![
            Request::Probe,
            Request::Heartbeat {
                id: 1,
                known_created: 2,
                known_index: 3,
                released: vec![(4, 7), (5, 9)],
            },
            Request::Join {
                id: u64::MAX,
                info: NodeInfo {
                    name: "né".into(),
                    addr: "[::1]:1".into(),
                    http_addr: Some("x".into()),
                },
                num_partitions: 256,
                incarnation: 0,
            },
            Request::Leave { id: 0 },
        ];
        for r in reqs {
            let back: Request = decode(&encode(&r).unwrap()).unwrap();
            assert_eq!(format!("{r:?}"), format!("{back:?}"));
        }
    }

    #[test]
    fn round_trip_raft_messages() {
        use openraft::raft::{AppendEntriesRequest, VoteRequest};
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
        let entry = Entry::<crate::raft::TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 9), 17),
            payload: EntryPayload::Normal(Command::NewEpoch { leader: 9 }),
        };
        let req = Request::AppendEntries {
            target: 4,
            rpc: AppendEntriesRequest {
                vote: Vote::new_committed(3, 9),
                prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 9), 16)),
                entries: vec![entry],
                leader_commit: None,
            },
        };
        let back: Request = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(format!("{req:?}"), format!("{back:?}"));
        let beat = Request::Beat {
            target: 4,
            rpc: AppendEntriesRequest {
                vote: Vote::new_committed(3, 9),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            },
            round: u64::MAX,
            renewed: Some(u64::MAX - 1),
            revocations: vec![(7, 950), (u32::MAX, 0)],
            suspects: vec![1, u64::MAX],
            table: (1_700_000_000, 42),
        };
        let back: Request = decode(&encode(&beat).unwrap()).unwrap();
        assert_eq!(format!("{beat:?}"), format!("{back:?}"));
        let vote = Request::Vote {
            target: 1,
            rpc: VoteRequest::new(Vote::new(4, 2), None),
        };
        let back: Request = decode(&encode(&vote).unwrap()).unwrap();
        assert_eq!(format!("{vote:?}"), format!("{back:?}"));
        let err: Response = Response::Vote(Err(openraft::error::RaftError::Fatal(
            openraft::error::Fatal::Stopped,
        )));
        let back: Response = decode(&encode(&err).unwrap()).unwrap();
        assert_eq!(format!("{err:?}"), format!("{back:?}"));
    }

    #[test]
    fn round_trip_snapshot_update() {
        let mut state = ClusterState::default();
        state.apply(5, &Command::NewEpoch { leader: 3 });
        let resp = Response::Heartbeat(HeartbeatOutcome::Ack {
            update: Update::Snapshot(Box::new(state)),
            suspects: vec![1, 2],
            revocations: vec![(3, 4500)],
        });
        let back: Response = decode(&encode(&resp).unwrap()).unwrap();
        assert_eq!(format!("{resp:?}"), format!("{back:?}"));
    }

    #[test]
    fn rejects_trailing_bytes_and_garbage() {
        let mut bytes = encode(&Request::Probe).unwrap().to_vec();
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(TransportError::Malformed(_))
        ));
        assert!(decode::<Request>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<Request>(&[]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut reader = framed(a, 64);
        b.write_all(&(1_000_000u32).to_be_bytes()).await.unwrap();
        let got = recv::<_, Request>(&mut reader).await;
        assert!(matches!(got, Err(TransportError::Malformed(_))), "{got:?}");
    }

    #[test]
    fn a_declared_length_allocates_nothing() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME, None);
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&(DEFAULT_MAX_FRAME as u32).to_be_bytes());
        buf.extend_from_slice(b"abc");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn the_limit_applies_until_raised() {
        let payload = vec![7u8; 5000];
        let frame = raw_frame(&payload);
        let mut small = FrameCodec::new(HANDSHAKE_MAX_FRAME, None);
        assert!(small.decode(&mut frame.clone()).is_err());
        small.set_max_frame(DEFAULT_MAX_FRAME);
        let got = small.decode(&mut frame.clone()).unwrap().unwrap();
        assert_eq!(&got[..], &payload[..]);
        // Our own frames obey the limit too.
        let mut out = BytesMut::new();
        let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME, None);
        assert!(codec.encode(Bytes::from(payload), &mut out).is_err());
    }

    #[test]
    fn large_frames_share_the_budget_and_give_it_back() {
        let budget = FrameBudget::new(3 * BUDGETED_FRAME);
        let head = |len: usize| {
            let mut b = BytesMut::new();
            b.extend_from_slice(&(len as u32).to_be_bytes());
            b
        };
        let big = 2 * BUDGETED_FRAME;
        let mut a = FrameCodec::new(DEFAULT_MAX_FRAME, Some(budget.clone()));
        let mut b = FrameCodec::new(DEFAULT_MAX_FRAME, Some(budget.clone()));
        assert!(a.decode(&mut head(big)).unwrap().is_none());
        assert_eq!(budget.used(), big);
        // The second large frame does not fit while the first is pending.
        assert!(b.decode(&mut head(big)).is_err());
        // Small frames never ask.
        let mut c = FrameCodec::new(DEFAULT_MAX_FRAME, Some(budget.clone()));
        let small = raw_frame(&[1, 2, 3]);
        assert!(c.decode(&mut small.clone()).unwrap().is_some());
        // A completed frame gives its share back...
        let mut rest = BytesMut::from(&vec![0u8; big][..]);
        assert_eq!(a.decode(&mut rest).unwrap().unwrap().len(), big);
        assert_eq!(budget.used(), 0);
        // ...and so does a connection dropped mid-frame.
        let mut d = FrameCodec::new(DEFAULT_MAX_FRAME, Some(budget.clone()));
        assert!(d.decode(&mut head(big)).unwrap().is_none());
        assert_eq!(budget.used(), big);
        drop(d);
        assert_eq!(budget.used(), 0);
    }

    proptest! {
        #[test]
        fn frames_split_anywhere_decode_the_same(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
            cut in 0usize..2000,
        ) {
            let mut wire = BytesMut::new();
            for p in &payloads {
                wire.extend_from_slice(&raw_frame(p));
            }
            let cut = cut.min(wire.len());
            let mut codec = FrameCodec::new(1024, None);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
            prop_assert_eq!(got, payloads);
        }
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut reader = framed(a, 1024);
        let frame = raw_frame(&encode(&Request::Probe).unwrap());
        b.write_all(&frame[..frame.len() - 1]).await.unwrap();
        drop(b);
        let got = recv::<_, Request>(&mut reader).await;
        assert!(matches!(got, Err(TransportError::Malformed(_))), "{got:?}");
    }

    #[tokio::test]
    async fn clean_close_is_none() {
        let (a, b) = tokio::io::duplex(1024);
        let mut reader = framed(a, 1024);
        drop(b);
        assert!(recv::<_, Request>(&mut reader).await.unwrap().is_none());
    }
}
