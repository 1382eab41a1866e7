//! Frames and message encoding.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! payload; the payload is one `postcard`-encoded message. Frames longer than
//! the configured maximum are refused before their payload is read.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

use crate::error::TransportError;

/// Default maximum frame size: 8 MiB (Raft snapshot chunks are sent at most
/// 1 MiB at a time, so this leaves ample room).
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// A byte stream split into frames.
pub type FramedStream<S> = Framed<S, FrameCodec>;

/// `tokio_util`'s length-delimited codec, plus one thing it lacks: a
/// connection that ends after a frame's length prefix but before its payload
/// is reported as truncated, not as a clean close.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    mid_frame: bool,
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let before = buf.len();
        let frame = self.inner.decode(buf)?;
        if frame.is_some() {
            self.mid_frame = false;
        } else if buf.len() < before {
            // The length prefix was consumed; the payload is still due.
            self.mid_frame = true;
        }
        Ok(frame)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if self.mid_frame || !buf.is_empty() => Err(std::io::Error::new(
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
        self.inner.encode(item, dst)
    }
}

/// Wraps `stream` in the frame codec with the given maximum payload size.
pub fn framed<S: AsyncRead + AsyncWrite>(stream: S, max_frame: usize) -> FramedStream<S> {
    let inner = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec();
    Framed::new(
        stream,
        FrameCodec {
            inner,
            mid_frame: false,
        },
    )
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
    // LengthDelimitedCodec reports oversized frames as InvalidData and a
    // connection cut mid-frame as UnexpectedEof.
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
