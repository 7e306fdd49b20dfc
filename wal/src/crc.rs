//! CRC32C arithmetic the frame format needs beside the `crc32c` crate,
//! which computes every checksum over bytes (with SSE 4.2 when the CPU has
//! it, detected at run time): combining the CRCs of two adjacent runs of
//! bytes, and copying bytes while checksumming them. Pure functions.
//!
//! `combine` is written here rather than taken from `crc32c::crc32c_combine`:
//! the crate's is zlib's old matrix method, measured at 12-15 µs per call on
//! this project's machine, more than computing the CRC of 16 KiB outright
//! (0.7-0.9 µs); this one (zlib 1.2.12's method: multiply by x^(8n) mod P,
//! with x^(2^k) mod P from a table built at compile time) took 62-69 ns.

/// The Castagnoli polynomial, bit-reflected (the `crc32c` crate's).
const POLY: u32 = 0x82F6_3B78;
/// The polynomial 1 (x^0) in reflected bit order.
const ONE: u32 = 1 << 31;
/// `X2N[k]` = x^(2^k) mod P, for every bit of a 64-bit bit count.
const X2N: [u32; 64] = x2n_table();

/// a * b mod P, both in reflected bit order. Bounded: 32 steps at most.
const fn mult_mod_p(a: u32, b: u32) -> u32 {
    let mut b = b;
    let mut m = ONE;
    let mut p = 0;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

const fn x2n_table() -> [u32; 64] {
    let mut t = [0u32; 64];
    let mut p = ONE >> 1; // x^1
    let mut k = 0;
    while k < 64 {
        t[k] = p;
        p = mult_mod_p(p, p);
        k += 1;
    }
    t
}

/// x^(8 * bytes) mod P: the operator that moves a CRC past `bytes` bytes.
fn shift_operator(bytes: u64) -> u32 {
    assert!(bytes < 1 << 61, "a run of bytes fits in a 64-bit bit count");
    let mut n = bytes;
    let mut k = 3; // 2^3 bits per byte
    let mut p = ONE;
    while n != 0 {
        if n & 1 != 0 {
            p = mult_mod_p(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC32C of A followed by B, from `crc_a` = CRC32C(A), `crc_b` =
/// CRC32C(B) and B's length, without reading either. Same convention as
/// `crc32c::crc32c` and `crc32c::crc32c_append`.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    mult_mod_p(shift_operator(len_b), crc_a) ^ crc_b
}

/// Bytes copied before their CRC is taken, so the CRC reads them from the
/// L1 cache: one pass over memory for the copy and the checksum.
const COPY_CHUNK_BYTES: usize = 4096;

/// Copies `src` into `dst` (same length) and returns `crc` extended over
/// the copied bytes, computed over `dst`: the checksum covers what was
/// written, not what was meant to be.
pub fn copy_and_append(crc: u32, dst: &mut [u8], src: &[u8]) -> u32 {
    assert_eq!(dst.len(), src.len(), "copy between runs of the same length");
    let mut crc = crc;
    for (d, s) in dst
        .chunks_mut(COPY_CHUNK_BYTES)
        .zip(src.chunks(COPY_CHUNK_BYTES))
    {
        d.copy_from_slice(s);
        crc = crc32c::crc32c_append(crc, d);
    }
    crc
}

/// Appends `src` to `out` and returns `crc` extended over the appended
/// bytes, in the same one pass as `copy_and_append` (no zeroing first).
pub fn copy_and_extend(crc: u32, out: &mut Vec<u8>, src: &[u8]) -> u32 {
    let mut crc = crc;
    out.reserve(src.len());
    for s in src.chunks(COPY_CHUNK_BYTES) {
        let from = out.len();
        out.extend_from_slice(s);
        crc = crc32c::crc32c_append(crc, &out[from..]);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_table_starts_at_x() {
        assert_eq!(X2N[0], 1 << 30);
        assert_eq!(shift_operator(0), ONE);
        assert_eq!(mult_mod_p(ONE, 0x1234_5678), 0x1234_5678);
    }

    #[test]
    fn combine_of_an_empty_run_keeps_the_crc() {
        let a = crc32c::crc32c(b"sluice");
        assert_eq!(combine(a, crc32c::crc32c(b""), 0), a);
    }

    #[test]
    fn combine_agrees_with_the_crate_on_large_lengths() {
        // Lengths past 2^32 bytes exercise the upper half of the table.
        for len in [1u64, 61, 16_384, (4 << 20) - 4096, 1 << 32, (1 << 40) + 7] {
            let (a, b) = (0xDEAD_BEEF, 0x0BAD_F00D);
            assert_eq!(
                combine(a, b, len),
                crc32c::crc32c_combine(a, b, len as usize),
                "length {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn combine_equals_the_crc_of_the_concatenation(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(data.len() + 1);
            let (a, b) = data.split_at(cut);
            let combined = combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64);
            prop_assert_eq!(combined, crc32c::crc32c(&data));
        }

        #[test]
        fn copy_and_append_copies_and_checksums(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            seed in any::<u32>(),
        ) {
            let mut out = vec![0u8; data.len()];
            let crc = copy_and_append(seed, &mut out, &data);
            prop_assert_eq!(&out, &data);
            prop_assert_eq!(crc, crc32c::crc32c_append(seed, &data));
            let mut grown = vec![1u8, 2, 3];
            let crc = copy_and_extend(seed, &mut grown, &data);
            prop_assert_eq!(&grown[3..], &data[..]);
            prop_assert_eq!(crc, crc32c::crc32c_append(seed, &data));
        }
    }
}
