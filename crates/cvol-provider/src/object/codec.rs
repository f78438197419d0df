//! How an object pool stores its objects' bytes: as they are (pools made without
//! compression or encryption, and every pool made before those existed), or sealed: each
//! object in an envelope, zstd-compressed where that saves space, and encrypted with
//! XAES-256-GCM under the pool's key when the pool is encrypted.
//!
//! An encrypted object carries its object name (which holds its volume and generation)
//! as associated data, so bytes copied or replayed under another name fail to decrypt:
//! a swapped chunk, an old manifest restated as a new one, a log record moved within its
//! log. The key is never stored in the pool: `pool.json` holds only a check value (the
//! sealed text [`CHECK`]), so a wrong key is told at open, before any data is read.
//!
//! Envelope: `cvs1`, one flags byte (1: zstd, 2: encrypted with XChaCha20-Poly1305, as
//! pools did before; 4: encrypted with XAES-256-GCM, see [`super::cipher`]), for an
//! encrypted object a 24-byte nonce, then the payload (ciphertext and 16-byte tag when
//! encrypted). A pool sealed with one cipher and written by a later cvol holds both;
//! each object opens by its own flags.

use super::cipher::PoolCipher;

const MAGIC: &[u8; 4] = b"cvs1";
const ZSTD: u8 = 1;
const XCHACHA: u8 = 2;
const XAES: u8 = 4;
/// zstd's level: fast, as a flush waits for it.
const LEVEL: i32 = 1;

/// What an encrypted pool's `pool.json` holds sealed, under the name `pool.json`.
pub(crate) const CHECK: &[u8] = b"cvol object pool key check";

/// Why stored bytes could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// Not an envelope, or one this codec cannot open.
    #[error("not a sealed object (no cvs1 envelope, or one with unknown flags)")]
    Envelope,
    /// Encrypted, and the pool has no key here.
    #[error("encrypted, and no key was given")]
    NoKey,
    /// Authentication failed: the wrong key, or bytes changed, cut or moved.
    #[error("does not authenticate: the wrong key, or bytes changed or moved")]
    Authentication,
    /// The compressed payload does not decompress.
    #[error("does not decompress: {0}")]
    Decompress(String),
}

/// A pool's way of storing objects.
#[derive(Clone, Default)]
pub(crate) struct Codec {
    /// Objects are sealed (compressed where it pays, encrypted with a key).
    sealed: bool,
    compress: bool,
    cipher: Option<PoolCipher>,
}

impl std::fmt::Debug for Codec {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("sealed", &self.sealed)
            .field("compress", &self.compress)
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl Codec {
    /// Objects sealed, compressed when `compress`, encrypted when given a key.
    pub(crate) fn sealed(compress: bool, key: Option<&[u8; 32]>) -> Self {
        Self {
            sealed: true,
            compress,
            cipher: key.map(PoolCipher::new),
        }
    }

    /// The cipher of an encrypted pool, for what keeps its bytes elsewhere (the disk cache).
    pub(crate) fn cipher(&self) -> Option<PoolCipher> {
        self.cipher.clone()
    }

    /// Whether objects are stored as they are.
    pub(crate) fn is_raw(&self) -> bool {
        !self.sealed
    }

    /// The stored form of object `name`'s bytes `plain`.
    pub(crate) fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        if !self.sealed {
            return plain.to_vec();
        }
        let mut flags = 0;
        let compressed;
        let mut payload = plain;
        if self.compress && worth_compressing(plain) {
            compressed = zstd::bulk::compress(plain, LEVEL).expect("zstd compresses any bytes");
            if saves_enough(compressed.len(), plain.len()) {
                payload = &compressed;
                flags |= ZSTD;
            }
        }
        let mut out = Vec::with_capacity(payload.len() + 64);
        out.extend_from_slice(MAGIC);
        match &self.cipher {
            Some(cipher) => {
                out.push(flags | XAES);
                cipher.seal_into(name.as_bytes(), payload, &mut out);
            }
            None => {
                out.push(flags);
                out.extend_from_slice(payload);
            }
        }
        out
    }

    /// The bytes of object `name` from their stored form; `limit` bounds what a
    /// decompression may produce.
    pub(crate) fn open(
        &self,
        name: &str,
        stored: &[u8],
        limit: usize,
    ) -> Result<Vec<u8>, CodecError> {
        if !self.sealed {
            return Ok(stored.to_vec());
        }
        if stored.len() < MAGIC.len() + 1 || &stored[..4] != MAGIC {
            return Err(CodecError::Envelope);
        }
        let flags = stored[4];
        if flags & !(ZSTD | XCHACHA | XAES) != 0 {
            return Err(CodecError::Envelope);
        }
        let body = &stored[5..];
        let payload: std::borrow::Cow<[u8]> = match (flags & (XCHACHA | XAES), &self.cipher) {
            (0, None) => body.into(),
            // An encrypted pool stores nothing in clear: this was put there by someone else.
            (0, Some(_)) => return Err(CodecError::Authentication),
            (_, None) => return Err(CodecError::NoKey),
            (XCHACHA, Some(cipher)) => cipher
                .open_xchacha(name.as_bytes(), body)
                .map_err(|_| CodecError::Authentication)?
                .into(),
            (XAES, Some(cipher)) => cipher
                .open(name.as_bytes(), body)
                .map_err(|_| CodecError::Authentication)?
                .into(),
            (_, Some(_)) => return Err(CodecError::Envelope),
        };
        if flags & ZSTD != 0 {
            zstd::bulk::decompress(&payload, limit)
                .map_err(|e| CodecError::Decompress(e.to_string()))
        } else {
            Ok(payload.into_owned())
        }
    }
}

/// Compression is kept only where it saves at least an eighth.
fn saves_enough(compressed: usize, plain: usize) -> bool {
    compressed < plain - plain / 8
}

/// Samples compressed together, [`SAMPLE`] bytes each, before a large object is
/// compressed whole.
const SAMPLES: usize = 32;
const SAMPLE: usize = 2048;

/// Whether compressing `plain` may pay: for a large object, whether [`SAMPLES`] pieces
/// of it compress enough together. Incompressible data (encrypted or already compressed
/// guest files, media) then costs a 64 KiB trial, not the whole object's. One piece is
/// taken from each of [`SAMPLES`] equal parts, at a place within it that varies from
/// part to part, so that data laid out at power-of-two strides is not always sampled at
/// the same spot of its pattern.
fn worth_compressing(plain: &[u8]) -> bool {
    if plain.len() < 4 * SAMPLES * SAMPLE {
        return true;
    }
    let part = plain.len() / SAMPLES;
    let sample: Vec<u8> = (0..SAMPLES)
        .flat_map(|i| {
            let within = (i * 0x9e37_79b9) % (part - SAMPLE);
            &plain[i * part + within..i * part + within + SAMPLE]
        })
        .copied()
        .collect();
    let compressed = zstd::bulk::compress(&sample, LEVEL).expect("zstd compresses any bytes");
    saves_enough(compressed.len(), sample.len())
}

/// Reads a pool key: 64 hex digits (white space around them ignored).
pub(crate) fn parse_key(text: &[u8]) -> Result<[u8; 32], String> {
    let text = std::str::from_utf8(text).map_err(|_| "a key is 64 hex digits".to_string())?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut key)
        .map_err(|_| "a key is 64 hex digits (e.g. from `openssl rand -hex 32`)".to_string())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn sealed_objects_open_only_under_their_name_and_key() {
        let codec = Codec::sealed(true, Some(&KEY));
        let plain = b"a guest's secret block ".repeat(200);
        let stored = codec.seal("vol-1/00-a", &plain);
        assert!(
            stored.len() < plain.len() / 4,
            "compressible data compresses"
        );
        assert!(
            !stored.windows(6).any(|w| w == b"secret"),
            "nothing in clear"
        );
        assert_eq!(
            codec.open("vol-1/00-a", &stored, plain.len()).unwrap(),
            plain
        );
        // Under another name (a swapped or replayed object): refused.
        assert!(matches!(
            codec.open("vol-1/00-b", &stored, plain.len()),
            Err(CodecError::Authentication)
        ));
        // One bit changed anywhere past the envelope's header: refused.
        for at in [5, 20, stored.len() / 2, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[at] ^= 1;
            assert!(codec.open("vol-1/00-a", &bad, plain.len()).is_err(), "{at}");
        }
        // Another key, or none.
        let other = Codec::sealed(true, Some(&[8; 32]));
        assert!(matches!(
            other.open("vol-1/00-a", &stored, plain.len()),
            Err(CodecError::Authentication)
        ));
        let keyless = Codec::sealed(true, None);
        assert!(matches!(
            keyless.open("vol-1/00-a", &stored, plain.len()),
            Err(CodecError::NoKey)
        ));
        // Cleartext slipped into an encrypted pool is refused too.
        let clear = keyless.seal("vol-1/00-a", &plain);
        assert!(codec.open("vol-1/00-a", &clear, plain.len()).is_err());
    }

    /// Objects that pools made before XAES-256-GCM hold (XChaCha20-Poly1305, flag 2, as
    /// RustCrypto sealed them) open beside new ones; a flags byte naming both ciphers
    /// is refused.
    #[test]
    fn objects_sealed_with_xchacha20_poly1305_before_still_open() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let codec = Codec::sealed(false, Some(&KEY));
        let plain = b"a chunk an earlier cvol stored".to_vec();
        let nonce = chacha20poly1305::XNonce::from([4u8; 24]);
        let mut old = b"cvs1".to_vec();
        old.push(XCHACHA);
        old.extend_from_slice(&nonce);
        let payload = Payload {
            msg: &plain,
            aad: b"vol-1/00-a",
        };
        old.extend(
            chacha20poly1305::XChaCha20Poly1305::new(&KEY.into())
                .encrypt(&nonce, payload)
                .unwrap(),
        );
        assert_eq!(codec.open("vol-1/00-a", &old, 100).unwrap(), plain);
        assert!(codec.open("vol-1/00-b", &old, 100).is_err());
        let new = codec.seal("vol-1/00-a", &plain);
        assert_eq!(new[4], XAES);
        assert_eq!(codec.open("vol-1/00-a", &new, 100).unwrap(), plain);
        let mut both = new.clone();
        both[4] |= XCHACHA;
        assert!(matches!(
            codec.open("vol-1/00-a", &both, 100),
            Err(CodecError::Envelope)
        ));
        let mut relabelled = new;
        relabelled[4] = XCHACHA;
        assert!(codec.open("vol-1/00-a", &relabelled, 100).is_err());
    }

    #[test]
    fn incompressible_bytes_are_stored_as_they_are_and_raw_codecs_change_nothing() {
        let codec = Codec::sealed(true, None);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let stored = codec.seal("k", &noise);
        assert_eq!(stored[4] & ZSTD, 0);
        assert_eq!(stored.len(), noise.len() + 5);
        assert_eq!(codec.open("k", &stored, noise.len()).unwrap(), noise);
        // A large object is tried on samples first: noise with runs of zeros between
        // the samples' places still compresses.
        let mut mixed = noise.clone();
        for piece in mixed.chunks_mut(8192) {
            piece[4096..].fill(0);
        }
        let stored = codec.seal("m", &mixed);
        assert_eq!(stored[4] & ZSTD, ZSTD);
        assert!(stored.len() < mixed.len() * 6 / 10, "{}", stored.len());
        assert_eq!(codec.open("m", &stored, mixed.len()).unwrap(), mixed);
        let raw = Codec::default();
        assert!(raw.is_raw());
        assert_eq!(raw.seal("k", b"abc"), b"abc");
        // A decompression bomb stops at the limit.
        let zeros = codec.seal("z", &vec![0; 1 << 20]);
        assert!(codec.open("z", &zeros, 4096).is_err());
    }

    #[test]
    fn keys_are_64_hex_digits() {
        let hex = "00".repeat(31) + "ff\n";
        assert_eq!(parse_key(hex.as_bytes()).unwrap()[31], 0xff);
        for bad in ["", "00", &"zz".repeat(32), &"00".repeat(33)] {
            assert!(parse_key(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
