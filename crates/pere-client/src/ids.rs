//! Ids a client makes up: device ids in the original clients' style, and idempotency keys.

use rand::Rng;

/// A device id in the original clients' style: `prefix` followed by 9 random digits.
pub fn random_device(prefix: &str, rng: &mut impl Rng) -> String {
    format!("{prefix}{:09}", rng.gen_range(0..1_000_000_000u32))
}

/// A fresh idempotency key: 128 random bits in hex. A client sends the same key with every
/// attempt at one event (or receipt), so a retry whose first attempt did get through is answered
/// with what was stored instead of storing it twice.
pub fn idempotency_key(rng: &mut impl Rng) -> String {
    format!("{:032x}", rng.gen::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_the_prefix_and_nine_digits() {
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let d = random_device("P0039", &mut rng);
            assert_eq!(d.len(), 14, "{d}");
            assert!(
                d.starts_with("P0039") && d[5..].bytes().all(|b| b.is_ascii_digit()),
                "{d}"
            );
        }
    }

    #[test]
    fn idempotency_keys_are_fresh_and_header_safe() {
        let mut rng = rand::thread_rng();
        let (a, b) = (idempotency_key(&mut rng), idempotency_key(&mut rng));
        assert_ne!(a, b);
        assert!(
            a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }
}
