//! The AEADs an encrypted pool seals with, under its 32-byte key.
//!
//! - **XAES-256-GCM** (C2SP), what everything is sealed with now: AES-256 turns the
//!   first 12 bytes of a random 24-byte nonce into a subkey (a CMAC-based derivation),
//!   and ring's AES-256-GCM seals under it with the last 12. On this CPU's AES
//!   instructions it runs about three times as fast as ChaCha20-Poly1305 (6.5 against
//!   2.3 GB/s per core), and an encrypted pool's throughput on a fast store is bound by
//!   it. Its key is derived from the pool key (HKDF-SHA256), not the pool key itself.
//! - **XChaCha20-Poly1305** (draft-irtf-cfrg-xchacha), what pools sealed before: opened,
//!   never sealed any more. HChaCha20 (RustCrypto's `chacha20`) turns the pool key and
//!   the first 16 bytes of the nonce into a subkey, and ring's ChaCha20-Poly1305 opens
//!   under it with the last 8: byte for byte RustCrypto's `XChaCha20Poly1305`.
//!
//! Both take 192-bit random nonces, which never repeat in practice however many objects
//! and cache blocks a pool key seals over its life; a 96-bit random nonce under one key
//! would not promise that past 2^32 messages. Both put the nonce first and the 16-byte
//! tag last.

use aes::cipher::{BlockEncrypt, KeyInit};
use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use ring::rand::SecureRandom;

/// Bytes of a nonce.
pub(crate) const NONCE: usize = 24;
/// Bytes of an authentication tag.
pub(crate) const TAG: usize = 16;

/// What the XAES-256-GCM key is derived from the pool key for.
const XAES_KEY_INFO: &[u8] = b"cvol object pool XAES-256-GCM key";

/// A pool key, ready to seal and open.
#[derive(Clone)]
pub(crate) struct PoolCipher {
    xaes: Xaes,
    /// The pool key itself, for XChaCha20-Poly1305.
    xchacha: chacha20::Key,
}

/// Sealed bytes that do not authenticate: the wrong key, or bytes changed, cut or moved.
#[derive(Debug)]
pub(crate) struct Unauthentic;

impl PoolCipher {
    /// The cipher of pool key `key`.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let mut xaes_key = [0u8; 32];
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[])
            .extract(key)
            .expand(&[XAES_KEY_INFO], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut xaes_key))
            .expect("32 bytes from HKDF-SHA256");
        Self {
            xaes: Xaes::new(&xaes_key),
            xchacha: (*key).into(),
        }
    }

    /// Appends `plain` sealed under associated data `aad` to `out`: a fresh random
    /// nonce, the ciphertext, the tag.
    pub(crate) fn seal_into(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE];
        random(&mut nonce);
        let key = self.xaes.subkey(&nonce);
        seal_with(&key, &nonce, aad, plain, out);
    }

    /// Appends each `block`-byte piece of `plain` sealed on its own as [`Self::seal_into`]
    /// does, piece `i` under associated data `{aad}#{i}`. The pieces' nonces share their
    /// random first half (so one subkey seals them all) and count in the second: distinct
    /// under that subkey by construction.
    pub(crate) fn seal_blocks_into(
        &self,
        aad: &str,
        plain: &[u8],
        block: usize,
        out: &mut Vec<u8>,
    ) {
        let mut nonce = [0u8; NONCE];
        random(&mut nonce[..NONCE / 2]);
        let key = self.xaes.subkey(&nonce);
        let mut name = String::with_capacity(aad.len() + 8);
        for (i, piece) in plain.chunks(block).enumerate() {
            nonce[NONCE - 8..].copy_from_slice(&(i as u64).to_be_bytes());
            name.clear();
            use std::fmt::Write as _;
            let _ = write!(name, "{aad}#{i}");
            seal_with(&key, &nonce, name.as_bytes(), piece, out);
        }
    }

    /// The plain bytes of `sealed` (nonce, ciphertext, tag; XAES-256-GCM) under
    /// associated data `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unauthentic> {
        let (nonce, rest) = split(sealed)?;
        open_with(&self.xaes.subkey(nonce), &nonce[12..], aad, rest)
    }

    /// The plain bytes of `sealed` with XChaCha20-Poly1305, as pools sealed before.
    pub(crate) fn open_xchacha(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unauthentic> {
        let (nonce, rest) = split(sealed)?;
        let subkey = chacha20::hchacha::<U10>(&self.xchacha, nonce[..16].into());
        let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey).expect("a 32-byte key");
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(&nonce[16..]);
        open_with(&LessSafeKey::new(key), &short, aad, rest)
    }
}

/// XAES-256-GCM's key derivation (C2SP): the AES-256 key schedule and the CMAC subkey
/// K1, computed once per key.
#[derive(Clone)]
struct Xaes {
    aes: aes::Aes256,
    k1: [u8; 16],
}

impl Xaes {
    fn new(key: &[u8; 32]) -> Self {
        let aes = aes::Aes256::new(key.into());
        let mut l = [0u8; 16];
        aes.encrypt_block((&mut l).into());
        let shifted = u128::from_be_bytes(l) << 1;
        let k1 = if l[0] & 0x80 != 0 {
            shifted ^ 0x87
        } else {
            shifted
        };
        Self {
            aes,
            k1: k1.to_be_bytes(),
        }
    }

    /// The AES-256-GCM key that the first half of 24-byte `nonce` stands for.
    fn subkey(&self, nonce: &[u8]) -> LessSafeKey {
        let mut halves = [[0u8; 16]; 2];
        for (i, m) in halves.iter_mut().enumerate() {
            m[..4].copy_from_slice(&[0, i as u8 + 1, b'X', 0]);
            m[4..].copy_from_slice(&nonce[..12]);
            for (b, k) in m.iter_mut().zip(self.k1) {
                *b ^= k;
            }
            self.aes.encrypt_block(m.into());
        }
        let key = UnboundKey::new(&AES_256_GCM, halves.as_flattened()).expect("a 32-byte key");
        LessSafeKey::new(key)
    }
}

/// The nonce of `sealed`, and the ciphertext and tag after it.
fn split(sealed: &[u8]) -> Result<(&[u8], &[u8]), Unauthentic> {
    if sealed.len() < NONCE + TAG {
        return Err(Unauthentic);
    }
    Ok(sealed.split_at(NONCE))
}

/// Appends `nonce`, `plain` sealed with `key` under the nonce's last 12 bytes, and the tag.
fn seal_with(key: &LessSafeKey, nonce: &[u8], aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    out.reserve(NONCE + plain.len() + TAG);
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(short_nonce(&nonce[12..]), Aad::from(aad), &mut out[start..])
        .expect("AES-256-GCM seals any length a pool stores");
    out.extend_from_slice(tag.as_ref());
}

/// Opens `body` (ciphertext and tag) with `key` under 12-byte nonce `short`.
fn open_with(
    key: &LessSafeKey,
    short: &[u8],
    aad: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, Unauthentic> {
    let mut buf = body.to_vec();
    let len = key
        .open_in_place(short_nonce(short), Aad::from(aad), &mut buf)
        .map_err(|_| Unauthentic)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// `short` (12 bytes) as ring's 96-bit nonce.
fn short_nonce(short: &[u8]) -> Nonce {
    Nonce::assume_unique_for_key(short.try_into().expect("12 bytes"))
}

/// Fills `buf` with the system's random bytes.
fn random(buf: &mut [u8]) {
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system's random numbers");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    /// What RustCrypto's XChaCha20-Poly1305 sealed (every encrypted pool made before
    /// XAES-256-GCM) opens, and nothing else does.
    #[test]
    fn what_xchacha20_poly1305_sealed_in_earlier_pools_opens() {
        let key = [9u8; 32];
        let ours = PoolCipher::new(&key);
        let theirs = XChaCha20Poly1305::new(&key.into());
        for len in [0, 1, 63, 64, 4096, 100_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let nonce = XNonce::from([len as u8; NONCE]);
            let mut sealed = nonce.to_vec();
            let payload = Payload {
                msg: &plain,
                aad: b"vol/chunk",
            };
            sealed.extend(theirs.encrypt(&nonce, payload).unwrap());
            assert_eq!(
                ours.open_xchacha(b"vol/chunk", &sealed).unwrap(),
                plain,
                "{len}"
            );
            assert!(ours.open_xchacha(b"vol/other", &sealed).is_err());
            assert!(ours.open(b"vol/chunk", &sealed).is_err(), "not XAES");
            for at in [0, NONCE, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert!(ours.open_xchacha(b"vol/chunk", &bad).is_err(), "{len} {at}");
            }
        }
        assert!(ours.open_xchacha(b"", &[0; NONCE + TAG - 1]).is_err());
    }

    /// C2SP's XAES-256-GCM test vectors.
    #[test]
    fn xaes_256_gcm_is_c2sps() {
        let cases: [(u8, &[u8], &str); 2] = [
            (
                1,
                b"",
                "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
            ),
            (
                3,
                b"c2sp.org/XAES-256-GCM",
                "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
            ),
        ];
        for (key, aad, expected) in cases {
            let xaes = Xaes::new(&[key; 32]);
            let nonce = b"ABCDEFGHIJKLMNOPQRSTUVWX";
            let mut sealed = Vec::new();
            seal_with(
                &xaes.subkey(nonce),
                nonce,
                aad,
                b"XAES-256-GCM",
                &mut sealed,
            );
            assert_eq!(hex::encode(&sealed[NONCE..]), expected);
        }
    }

    /// Sealed and opened under its name only; one changed bit anywhere is refused; the
    /// pool key itself is not the XAES key.
    #[test]
    fn sealed_bytes_open_only_whole_and_under_their_name() {
        let key = [5u8; 32];
        let cipher = PoolCipher::new(&key);
        for len in [0, 1, 4096, 100_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let mut sealed = Vec::new();
            cipher.seal_into(b"vol/chunk", &plain, &mut sealed);
            assert_eq!(sealed.len(), NONCE + len + TAG);
            assert_eq!(cipher.open(b"vol/chunk", &sealed).unwrap(), plain);
            assert!(cipher.open(b"vol/other", &sealed).is_err());
            for at in [0, 13, NONCE, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert!(cipher.open(b"vol/chunk", &bad).is_err(), "{len} {at}");
            }
            let raw = Xaes::new(&key);
            let (nonce, body) = sealed.split_at(NONCE);
            assert!(open_with(&raw.subkey(nonce), &nonce[12..], b"vol/chunk", body).is_err());
        }
    }

    /// Pieces sealed together are what sealing each on its own under `{aad}#{i}` makes:
    /// each opens alone, only under its own number, and no two share a nonce.
    #[test]
    fn pieces_sealed_together_open_one_by_one() {
        let cipher = PoolCipher::new(&[3u8; 32]);
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        cipher.seal_blocks_into("vol/chunk", &plain, 4096, &mut out);
        let mut rest = out.as_slice();
        let mut nonces = std::collections::HashSet::new();
        for (i, piece) in plain.chunks(4096).enumerate() {
            let (sealed, more) = rest.split_at(NONCE + piece.len() + TAG);
            rest = more;
            assert!(
                nonces.insert(sealed[..NONCE].to_vec()),
                "nonce of piece {i} repeats"
            );
            let aad = format!("vol/chunk#{i}");
            assert_eq!(cipher.open(aad.as_bytes(), sealed).unwrap(), piece);
            let other = format!("vol/chunk#{}", i + 1);
            assert!(cipher.open(other.as_bytes(), sealed).is_err());
        }
        assert!(rest.is_empty());
        // Another chunk's pieces get another random half.
        let mut again = Vec::new();
        cipher.seal_blocks_into("vol/chunk", &plain, 4096, &mut again);
        assert_ne!(again[..NONCE / 2], out[..NONCE / 2]);
    }
}
