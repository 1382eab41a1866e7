//! Issue 18, item 2: peer traffic over mutual TLS. Nodes with certificates
//! from the cluster CA form a cluster; a node whose certificate comes from
//! another CA, and a client speaking plain TCP, are refused.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use ringleader::Error;
use ringleader::transport::tls::TlsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA, and a function making node TLS configs signed by it.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A node certificate for 127.0.0.1, with the cluster CA trusted.
    fn node(&self) -> TlsConfig {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        TlsConfig::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            self.cert.pem().as_bytes(),
        )
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_forms_over_mutual_tls_and_refuses_other_cas() {
    init_tracing();
    let ca = Ca::new();
    let addrs = free_addrs(3);
    let starts = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| builder(&format!("t{i}"), a, &addrs).tls(ca.node()).start());
    let nodes: Vec<_> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.expect("start"))
        .collect();
    let before = wait_agreement(&nodes, 3, "3 nodes over TLS").await;

    // A certificate from another CA is refused, and the node says why.
    let stranger = builder("stranger", &free_addrs(1)[0], &addrs)
        .tls(Ca::new().node())
        .start()
        .await
        .unwrap();
    match stranger.wait_ready(DEADLINE).await {
        Err(Error::Refused(reason)) => assert!(reason.contains("TLS"), "{reason}"),
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
    stranger.shutdown().await;

    // Plain TCP gets nothing but a closed connection.
    let mut plain = tokio::net::TcpStream::connect(&addrs[0]).await.unwrap();
    plain.write_all(&[0, 0, 0, 3, 0, 3, 0]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, plain.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(n)) if n == 0 || buf[0] == 0x15),
        "a plain client got an answer: {read:?}"
    );

    let after = wait_agreement(&nodes, 3, "the TLS cluster is unchanged").await;
    assert_eq!(after.members, before.members);
    shutdown_all(&nodes).await;
}

#[test]
fn bad_pem_names_the_setting() {
    let ca = Ca::new();
    let e = TlsConfig::from_pem(b"nothing", b"nothing", ca.cert.pem().as_bytes()).unwrap_err();
    assert_eq!(e.setting(), "tls-cert");
    let missing = std::path::Path::new("/nonexistent/ringleader-cert.pem");
    let e = TlsConfig::from_pem_files(missing, missing, missing).unwrap_err();
    assert_eq!(e.setting(), "tls-cert");
    assert!(e.to_string().contains("/nonexistent"), "{e}");
}

/// The commands docs/security.md gives for making a CA and node
/// certificates with `openssl` produce files a cluster runs with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_made_as_the_docs_say_work() {
    use std::process::Command;
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: no openssl on this machine");
        return;
    }
    init_tracing();
    let dir = std::env::temp_dir().join(format!("ringleader-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sh = |script: &str| {
        let out = Command::new("bash")
            .arg("-euc")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The same commands as docs/security.md.
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj '/CN=ringleader cluster CA' -keyout ca.key -out ca.pem",
    );
    for node in ["a", "b"] {
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
             -subj /CN=node-{node} -keyout {node}.key -out {node}.csr && \
             printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > {node}.ext && \
             openssl x509 -req -in {node}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -days 825 -out {node}.pem -extfile {node}.ext"
        ));
    }
    let addrs = free_addrs(2);
    let mut nodes = Vec::new();
    for (i, node) in ["a", "b"].iter().enumerate() {
        let tls = TlsConfig::from_pem_files(
            &dir.join(format!("{node}.pem")),
            &dir.join(format!("{node}.key")),
            &dir.join("ca.pem"),
        )
        .expect("the documented files load");
        let started = builder(node, &addrs[i], &addrs).voters(1).tls(tls).start();
        nodes.push(started.await.unwrap());
    }
    wait_agreement(&nodes, 1, "2 nodes over TLS with openssl-made certificates").await;
    shutdown_all(&nodes).await;
    let _ = std::fs::remove_dir_all(&dir);
}
