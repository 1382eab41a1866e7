//! The connection handshake: protocol version, cluster name, and an optional
//! HMAC-SHA256 challenge-response proving both sides know the cluster secret.
//!
//! ```text
//! client -> server  Hello     { version, cluster, client_nonce }
//! server -> client  Challenge { version, cluster, server_nonce,
//!                               server_proof = HMAC(secret, "ringleader server" | cluster | client_nonce | server_nonce) }
//! client -> server  Auth      { client_proof = HMAC(secret, "ringleader client" | cluster | client_nonce | server_nonce) }
//! server -> client  Welcome   or  Refused(reason)
//! ```
//!
//! Proofs are absent when no secret is configured. A side with a secret
//! refuses a peer without a valid proof; a side without a secret refuses a
//! peer that sends one (the configurations differ, which is an operator
//! error worth surfacing). Nonces are fresh per connection, so a recorded
//! handshake cannot be replayed. The secret itself never crosses the wire.
//! After the handshake the connection is not encrypted: use a private network
//! or a tunnel where confidentiality matters.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{FramedStream, recv_required, send};
use crate::error::{HandshakeError, TransportError};
use crate::protocol::PROTOCOL_VERSION;

/// A shared cluster secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the secret bytes (surrounding whitespace is the caller's business).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    fn proof(&self, label: &[u8], cluster: &str, client: &[u8; 32], server: &[u8; 32]) -> [u8; 32] {
        let mut mac = self.mac();
        feed(&mut mac, label, cluster, client, server);
        mac.finalize().into_bytes().into()
    }

    fn verify(
        &self,
        label: &[u8],
        cluster: &str,
        client: &[u8; 32],
        server: &[u8; 32],
        proof: &[u8; 32],
    ) -> bool {
        let mut mac = self.mac();
        feed(&mut mac, label, cluster, client, server);
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

fn feed(mac: &mut Hmac<Sha256>, label: &[u8], cluster: &str, client: &[u8; 32], server: &[u8; 32]) {
    mac.update(label);
    mac.update(&(cluster.len() as u64).to_be_bytes());
    mac.update(cluster.as_bytes());
    mac.update(client);
    mac.update(server);
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
        /// A fresh random nonce.
        nonce: [u8; 32],
    },
    /// The accepting side's answer.
    Challenge {
        /// Its protocol version.
        version: u16,
        /// Its cluster name.
        cluster: String,
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

/// Runs the connecting side of the handshake.
pub async fn client<S>(
    framed: &mut FramedStream<S>,
    cluster: &str,
    secret: Option<&Secret>,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client_nonce = nonce();
    send(
        framed,
        &HandshakeMsg::Hello {
            version: PROTOCOL_VERSION,
            cluster: cluster.to_string(),
            nonce: client_nonce,
        },
    )
    .await?;
    let (server_nonce, server_proof) = match recv_required::<_, HandshakeMsg>(framed).await? {
        HandshakeMsg::Challenge {
            version,
            cluster: theirs,
            nonce,
            proof,
        } => {
            check_peer(version, cluster, &theirs)?;
            (nonce, proof)
        }
        HandshakeMsg::Refused(reason) => return Err(HandshakeError::Refused(reason).into()),
        other => return Err(HandshakeError::Unexpected(format!("{other:?}")).into()),
    };
    let client_proof = match (secret, server_proof) {
        (Some(secret), Some(proof)) => {
            if !secret.verify(SERVER_LABEL, cluster, &client_nonce, &server_nonce, &proof) {
                let e = HandshakeError::Auth(
                    "the server's proof of the cluster secret is wrong".into(),
                );
                refuse(framed, &e).await;
                return Err(e.into());
            }
            Some(secret.proof(CLIENT_LABEL, cluster, &client_nonce, &server_nonce))
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
    match recv_required::<_, HandshakeMsg>(framed).await? {
        HandshakeMsg::Welcome => Ok(()),
        HandshakeMsg::Refused(reason) => Err(HandshakeError::Refused(reason).into()),
        other => Err(HandshakeError::Unexpected(format!("{other:?}")).into()),
    }
}

/// Runs the accepting side of the handshake. On failure the peer has been
/// told why (when it got that far) and the caller should close the connection.
pub async fn server<S>(
    framed: &mut FramedStream<S>,
    cluster: &str,
    secret: Option<&Secret>,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client_nonce = match recv_required::<_, HandshakeMsg>(framed).await? {
        HandshakeMsg::Hello {
            version,
            cluster: theirs,
            nonce,
        } => {
            if let Err(e) = check_peer(version, cluster, &theirs) {
                refuse(framed, &e).await;
                return Err(e.into());
            }
            nonce
        }
        other => return Err(HandshakeError::Unexpected(format!("{other:?}")).into()),
    };
    let server_nonce = nonce();
    let proof = secret.map(|s| s.proof(SERVER_LABEL, cluster, &client_nonce, &server_nonce));
    send(
        framed,
        &HandshakeMsg::Challenge {
            version: PROTOCOL_VERSION,
            cluster: cluster.to_string(),
            nonce: server_nonce,
            proof,
        },
    )
    .await?;
    let client_proof = match recv_required::<_, HandshakeMsg>(framed).await? {
        HandshakeMsg::Auth { proof } => proof,
        // The client refused us (e.g. our proof was wrong): nothing to add.
        HandshakeMsg::Refused(reason) => return Err(HandshakeError::Refused(reason).into()),
        other => return Err(HandshakeError::Unexpected(format!("{other:?}")).into()),
    };
    let verdict = match (secret, client_proof) {
        (Some(secret), Some(proof)) => {
            if secret.verify(CLIENT_LABEL, cluster, &client_nonce, &server_nonce, &proof) {
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
        Ok(()) => send(framed, &HandshakeMsg::Welcome).await,
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
            ours: ours.to_string(),
            theirs: theirs.to_string(),
        });
    }
    Ok(())
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
    ) -> (Result<(), TransportError>, Result<(), TransportError>) {
        let (a, b) = tokio::io::duplex(4096);
        let (mut fa, mut fb) = (framed(a, 4096), framed(b, 4096));
        let cs = client_secret.map(|s| Secret::new(s.as_bytes()));
        let ss = server_secret.map(|s| Secret::new(s.as_bytes()));
        let c = async {
            let r = client(&mut fa, client_cluster, cs.as_ref()).await;
            drop(fa);
            r
        };
        let s = async {
            let r = server(&mut fb, server_cluster, ss.as_ref()).await;
            drop(fb);
            r
        };
        tokio::join!(c, s)
    }

    #[tokio::test]
    async fn same_cluster_no_secret() {
        let (c, s) = run("x", None, "x", None).await;
        assert_eq!(c, Ok(()));
        assert_eq!(s, Ok(()));
    }

    #[tokio::test]
    async fn same_secret() {
        let (c, s) = run("x", Some("k"), "x", Some("k")).await;
        assert_eq!(c, Ok(()));
        assert_eq!(s, Ok(()));
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
}
