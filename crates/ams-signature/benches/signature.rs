//! Signature cost: content build, sign and verify for 1 KiB and 64 KiB bodies, and the RSA
//! engines side by side (aws-lc-rs, which the sidecar uses; ring, the other rustls engine and
//! the former default; and the pure-Rust `rsa` crate), so the engine choice stays measured.
//!
//! Run: `cargo bench --bench signature` (at the workspace root or in crates/ams-signature;
//! criterion prints time per op; ops/s = 1 / time).

use std::hint::black_box;

use ams_signature::{content_to_sign, sign_content, PrivateKey, Verifier};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn keys_file() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/ams-public.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn body(len: usize) -> Vec<u8> {
    let mut b = b"{\"paymentRequestId\":\"pay_1\",\"note\":\"".to_vec();
    b.resize(len - 2, b'x');
    b.extend_from_slice(b"\"}");
    b
}

fn protocol(c: &mut Criterion) {
    let keys = keys_file();
    let pem = keys["keys"]["merchant"]["private_pkcs8_pem"]
        .as_str()
        .unwrap();
    let key = PrivateKey::from_text(pem).unwrap();
    let verifier = Verifier::new([("1".to_string(), key.public_key())]);
    let mut g = c.benchmark_group("protocol");
    for size in [1024usize, 64 * 1024] {
        let body = body(size);
        let content = content_to_sign(
            "POST",
            "/ams/api/v1/payments/pay",
            "T_111222333",
            "1714538096000",
            &body,
        );
        let header = sign_content(&key, "1", &content).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("content", size), &body, |b, body| {
            b.iter(|| {
                content_to_sign(
                    "POST",
                    "/ams/api/v1/payments/pay",
                    "T_111222333",
                    "1714538096000",
                    black_box(body),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("sign", size), &content, |b, content| {
            b.iter(|| sign_content(&key, "1", black_box(content)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("verify", size), &content, |b, content| {
            b.iter(|| verifier.verify(black_box(content), &header).unwrap())
        });
    }
    g.finish();
}

fn engines(c: &mut Criterion) {
    let keys = keys_file();
    let der_b64 = keys["keys"]["merchant"]["private_pkcs8_der_b64"]
        .as_str()
        .unwrap();
    use base64::Engine as _;
    let pkcs8 = base64::engine::general_purpose::STANDARD
        .decode(der_b64)
        .unwrap();
    let content = content_to_sign(
        "POST",
        "/ams/api/v1/payments/pay",
        "T_111222333",
        "1714538096000",
        &body(1024),
    );

    let mut g = c.benchmark_group("engine_sign_1KiB");
    g.throughput(Throughput::Elements(1));
    {
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let mut sig = vec![0; pair.public().modulus_len()];
        g.bench_function("ring", |b| {
            b.iter(|| {
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    black_box(&content),
                    &mut sig,
                )
                .unwrap()
            })
        });
    }
    {
        let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0; pair.public_modulus_len()];
        g.bench_function("aws-lc-rs", |b| {
            b.iter(|| {
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    black_box(&content),
                    &mut sig,
                )
                .unwrap()
            })
        });
    }
    {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::Signer;
        let key = rsa::PrivateKey::from_pkcs8_der(&pkcs8).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
        g.bench_function("rsa", |b| b.iter(|| signer.sign(black_box(&content))));
    }
    g.finish();
}

criterion_group!(benches, protocol, engines);
criterion_main!(benches);
