//! The connection handshake: protocol version, cluster name, the identity
//! of both nodes, and an HMAC-SHA256 challenge-response proving both sides
//! know the cluster secret.
//!
//! ```text
//! client -> server  Hello     { version, cluster, node = client id, client_nonce }
//! server -> client  Challenge { version, cluster, node = server id, server_nonce,
//!                               server_proof = HMAC(secret, "ringleader server" | transcript) }
//! client -> server  Auth      { client_proof = HMAC(secret, "ringleader client" | transcript) }
//! server -> client  Welcome   or  Refused(reason)
//!
//! transcript = cluster | client id | server id | client_nonce | server_nonce
//! ```
//!
//! The handshake binds the connection to the client's node id: the server
//! hands every later request to the node together with that id
//! ([`super::Peer`]), and the node refuses a request that speaks for
//! another node. With a secret, the id is covered by the proofs, so it
//! cannot be changed on the wire.
//!
//! Proofs are absent when no secret is configured. A side with a secret
//! refuses a peer without a valid proof; a side without a secret refuses a
//! peer that sends one (the configurations differ, which is an operator
//! error worth surfacing). Nonces are fresh per connection, so a recorded
//! handshake cannot be replayed. The secret itself never crosses the wire.
//! Before the handshake ends a connection may only send frames of at most
//! [`super::codec::HANDSHAKE_MAX_FRAME`] bytes, and refusals carry no state
//! of the node beyond its cluster name and protocol version. After the
//! handshake the connection is not encrypted: use a private network or a
//! tunnel where confidentiality matters.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{FramedStream, recv_required, send};
use crate::error::{HandshakeError, TransportError};
use crate::limits::{MAX_NAME_BYTES, clip};
use crate::protocol::PROTOCOL_VERSION;
use crate::types::NodeId;

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// A shared cluster secret: raw bytes, at least [`MIN_SECRET_BYTES`] long.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the secret bytes as they are (no decoding, no trimming).
    ///
    /// # Errors
    /// A secret shorter than [`MIN_SECRET_BYTES`] is refused: it could be
    /// guessed.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretTooShort> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretTooShort(bytes.len()));
        }
        Ok(Secret(bytes))
    }

    fn proof(&self, label: &[u8], t: &Transcript<'_>) -> [u8; 32] {
        let mut mac = self.mac();
        t.feed(&mut mac, label);
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, label: &[u8], t: &Transcript<'_>, proof: &[u8; 32]) -> bool {
        let mut mac = self.mac();
        t.feed(&mut mac, label);
        // Constant-time comparison.
        mac.verify_slice(proof).is_ok()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A secret of fewer than [`MIN_SECRET_BYTES`] bytes (the count is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cluster secret has {0} bytes; at least {MIN_SECRET_BYTES} are needed")]
pub struct SecretTooShort(pub usize);

/// What both proofs cover.
struct Transcript<'a> {
    cluster: &'a str,
    client: NodeId,
    server: NodeId,
    client_nonce: &'a [u8; 32],
    server_nonce: &'a [u8; 32],
}

impl Transcript<'_> {
    fn feed(&self, mac: &mut Hmac<Sha256>, label: &[u8]) {
        mac.update(label);
        mac.update(&(self.cluster.len() as u64).to_be_bytes());
        mac.update(self.cluster.as_bytes());
        mac.update(&self.client.to_be_bytes());
        mac.update(&self.server.to_be_bytes());
        mac.update(self.client_nonce);
        mac.update(self.server_nonce);
    }
}

const CLIENT_LABEL: &[u8] = b"ringleader client";
const SERVER_LABEL: &[u8] = b"ringleader server";

/// Handshake messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// First message from the connecting side.
    Hello {
        /// Its protocol version.
        version: u16,
        /// Its cluster name.
        cluster: String,
        /// Its node id: the identity every later request is checked against.
        node: NodeId,
        /// A fresh random nonce.
        nonce: [u8; 32],
    },
    /// The accepting side's answer.
    Challenge {
        /// Its protocol version.
        version: u16,
        /// Its cluster name.
        cluster: String,
        /// Its node id.
        node: NodeId,
        /// A fresh random nonce.
        nonce: [u8; 32],
        /// Its proof of the secret, if it has one.
        proof: Option<[u8; 32]>,
    },
    /// The connecting side's proof.
    Auth {
        /// Its proof of the secret, if it has one.
        proof: Option<[u8; 32]>,
    },
    /// The connection is admitted.
    Welcome,
    /// The connection is refused, with the reason.
    Refused(String),
}

fn nonce() -> [u8; 32] {
    crate::runtime::random()
}

/// The identities a handshake established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    /// The other side's node id.
    pub peer: NodeId,
    /// Whether the other side proved it knows the cluster secret.
    pub authenticated: bool,
}

/// Runs the connecting side of the handshake as node `me`; returns the
/// server's identity.
pub async fn client<S>(
    framed: &mut FramedStream<S>,
    cluster: &str,
    me: NodeId,
    secret: Option<&Secret>,
) -> Result<Established, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client_nonce = nonce();
    send(
        framed,
        &HandshakeMsg::Hello {
            version: PROTOCOL_VERSION,
            cluster: cluster.to_string(),
            node: me,
            nonce: client_nonce,
        },
    )
    .await?;
    let (server, server_nonce, server_proof) = match recv_required(framed).await? {
        HandshakeMsg::Challenge {
            version,
            cluster: theirs,
            node,
            nonce,
            proof,
        } => {
            check_peer(version, cluster, &theirs)?;
            (node, nonce, proof)
        }
        HandshakeMsg::Refused(reason) => return Err(refused(reason)),
        other => return Err(unexpected(&other)),
    };
    let transcript = Transcript {
        cluster,
        client: me,
        server,
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
    };
    let client_proof = match (secret, server_proof) {
        (Some(secret), Some(proof)) => {
            if !secret.verify(SERVER_LABEL, &transcript, &proof) {
                let e = HandshakeError::Auth(
                    "the server's proof of the cluster secret is wrong".into(),
                );
                refuse(framed, &e).await;
                return Err(e.into());
            }
            Some(secret.proof(CLIENT_LABEL, &transcript))
        }
        (Some(_), None) => {
            let e = HandshakeError::Auth("the server has no cluster secret but we do".into());
            refuse(framed, &e).await;
            return Err(e.into());
        }
        (None, Some(_)) => {
            let e = HandshakeError::Auth(
                "the server requires a cluster secret and we have none".into(),
            );
            refuse(framed, &e).await;
            return Err(e.into());
        }
        (None, None) => None,
    };
    send(
        framed,
        &HandshakeMsg::Auth {
            proof: client_proof,
        },
    )
    .await?;
    match recv_required(framed).await? {
        HandshakeMsg::Welcome => Ok(Established {
            peer: server,
            authenticated: secret.is_some(),
        }),
        HandshakeMsg::Refused(reason) => Err(refused(reason)),
        other => Err(unexpected(&other)),
    }
}

/// Runs the accepting side of the handshake as node `me`; returns the
/// client's identity. On failure the peer has been told why (when it got
/// that far) and the caller should close the connection.
pub async fn server<S>(
    framed: &mut FramedStream<S>,
    cluster: &str,
    me: NodeId,
    secret: Option<&Secret>,
) -> Result<Established, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client, client_nonce) = match recv_required(framed).await? {
        HandshakeMsg::Hello {
            version,
            cluster: theirs,
            node,
            nonce,
        } => {
            if let Err(e) = check_peer(version, cluster, &theirs) {
                refuse(framed, &e).await;
                return Err(e.into());
            }
            (node, nonce)
        }
        other => return Err(unexpected(&other)),
    };
    let server_nonce = nonce();
    let transcript = Transcript {
        cluster,
        client,
        server: me,
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
    };
    let proof = secret.map(|s| s.proof(SERVER_LABEL, &transcript));
    send(
        framed,
        &HandshakeMsg::Challenge {
            version: PROTOCOL_VERSION,
            cluster: cluster.to_string(),
            node: me,
            nonce: server_nonce,
            proof,
        },
    )
    .await?;
    let client_proof = match recv_required(framed).await? {
        HandshakeMsg::Auth { proof } => proof,
        // The client refused us (e.g. our proof was wrong): nothing to add.
        HandshakeMsg::Refused(reason) => return Err(refused(reason)),
        other => return Err(unexpected(&other)),
    };
    let verdict = match (secret, client_proof) {
        (Some(secret), Some(proof)) => {
            if secret.verify(CLIENT_LABEL, &transcript, &proof) {
                Ok(())
            } else {
                Err(HandshakeError::Auth("wrong cluster secret".into()))
            }
        }
        (Some(_), None) => Err(HandshakeError::Auth("a cluster secret is required".into())),
        (None, Some(_)) => Err(HandshakeError::Auth(
            "this node has no cluster secret".into(),
        )),
        (None, None) => Ok(()),
    };
    match verdict {
        Ok(()) => {
            send(framed, &HandshakeMsg::Welcome).await?;
            Ok(Established {
                peer: client,
                authenticated: secret.is_some(),
            })
        }
        Err(e) => {
            refuse(framed, &e).await;
            Err(e.into())
        }
    }
}

fn check_peer(version: u16, ours: &str, theirs: &str) -> Result<(), HandshakeError> {
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    if ours != theirs {
        return Err(HandshakeError::Cluster {
            ours: clip(ours, MAX_NAME_BYTES),
            theirs: clip(theirs, MAX_NAME_BYTES),
        });
    }
    Ok(())
}

/// A peer's refusal, its text bounded (it is logged).
fn refused(reason: String) -> TransportError {
    HandshakeError::Refused(clip(&reason, MAX_NAME_BYTES)).into()
}

/// A message out of place, named but not echoed (it is logged).
fn unexpected(message: &HandshakeMsg) -> TransportError {
    let name = match message {
        HandshakeMsg::Hello { .. } => "Hello",
        HandshakeMsg::Challenge { .. } => "Challenge",
        HandshakeMsg::Auth { .. } => "Auth",
        HandshakeMsg::Welcome => "Welcome",
        HandshakeMsg::Refused(_) => "Refused",
    };
    HandshakeError::Unexpected(name.into()).into()
}

async fn refuse<S>(framed: &mut FramedStream<S>, e: &HandshakeError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Best effort: the peer may already be gone.
    let _ = send(framed, &HandshakeMsg::Refused(e.to_string())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::codec::framed;

    async fn run(
        client_cluster: &str,
        client_secret: Option<&str>,
        server_cluster: &str,
        server_secret: Option<&str>,
    ) -> (
        Result<Established, TransportError>,
        Result<Established, TransportError>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let (mut fa, mut fb) = (framed(a, 4096), framed(b, 4096));
        let key = |s: &str| Secret::new(format!("{s:<16}")).unwrap();
        let cs = client_secret.map(key);
        let ss = server_secret.map(key);
        let c = async {
            let r = client(&mut fa, client_cluster, 11, cs.as_ref()).await;
            drop(fa);
            r
        };
        let s = async {
            let r = server(&mut fb, server_cluster, 22, ss.as_ref()).await;
            drop(fb);
            r
        };
        tokio::join!(c, s)
    }

    fn est(peer: NodeId, authenticated: bool) -> Result<Established, TransportError> {
        Ok(Established {
            peer,
            authenticated,
        })
    }

    #[tokio::test]
    async fn same_cluster_no_secret() {
        let (c, s) = run("x", None, "x", None).await;
        assert_eq!(c, est(22, false));
        assert_eq!(s, est(11, false));
    }

    #[tokio::test]
    async fn same_secret() {
        let (c, s) = run("x", Some("k"), "x", Some("k")).await;
        assert_eq!(c, est(22, true));
        assert_eq!(s, est(11, true));
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_both_ways() {
        let (c, s) = run("x", Some("k1"), "x", Some("k2")).await;
        assert!(
            matches!(c, Err(TransportError::Handshake(HandshakeError::Auth(_)))),
            "{c:?}"
        );
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn missing_secret_is_refused() {
        let (c, s) = run("x", None, "x", Some("k")).await;
        assert!(c.is_err());
        assert!(s.is_err());
        let (c, s) = run("x", Some("k"), "x", None).await;
        assert!(c.is_err());
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn other_cluster_is_refused() {
        let (c, s) = run("x", None, "y", None).await;
        assert!(
            matches!(
                c,
                Err(TransportError::Handshake(HandshakeError::Refused(_)))
            ),
            "{c:?}"
        );
        assert!(matches!(
            s,
            Err(TransportError::Handshake(HandshakeError::Cluster { .. }))
        ));
    }

    #[test]
    fn short_secrets_are_refused_and_bytes_are_kept_raw() {
        assert_eq!(Secret::new(vec![1u8; 15]).unwrap_err(), SecretTooShort(15));
        // Invalid UTF-8 stays distinct: no lossy decoding anywhere.
        let a = Secret::new(vec![0xffu8; 16]).unwrap();
        let b = Secret::new(vec![0xfau8; 16]).unwrap();
        let t = Transcript {
            cluster: "x",
            client: 1,
            server: 2,
            client_nonce: &[0; 32],
            server_nonce: &[1; 32],
        };
        assert_ne!(a.proof(CLIENT_LABEL, &t), b.proof(CLIENT_LABEL, &t));
    }

    #[test]
    fn the_proof_covers_both_identities() {
        let s = Secret::new(vec![7u8; 32]).unwrap();
        let t = |client, server| Transcript {
            cluster: "x",
            client,
            server,
            client_nonce: &[0; 32],
            server_nonce: &[1; 32],
        };
        let proof = s.proof(CLIENT_LABEL, &t(1, 2));
        assert!(s.verify(CLIENT_LABEL, &t(1, 2), &proof));
        assert!(!s.verify(CLIENT_LABEL, &t(3, 2), &proof));
        assert!(!s.verify(CLIENT_LABEL, &t(1, 3), &proof));
        assert!(!s.verify(SERVER_LABEL, &t(1, 2), &proof));
    }

    #[tokio::test]
    async fn a_huge_cluster_name_is_clipped_in_the_error() {
        let long = "y".repeat(3000);
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut fa, mut fb) = (framed(a, 1 << 16), framed(b, 1 << 16));
        let c = async { client(&mut fa, &long, 1, None).await };
        let s = async { server(&mut fb, "x", 2, None).await };
        let (c, s) = tokio::join!(c, s);
        for e in [c.unwrap_err(), s.unwrap_err()] {
            assert!(e.to_string().len() < 2 * MAX_NAME_BYTES + 100, "{e}");
        }
    }
}
