//! Byte sizes as people write and read them: flags accept `4096`, `256MiB`, `1.5G`, `10 GB`
//! (K/M/G/T are powers of 1024 with or without `i`/`B`, as in du and restic); text output
//! shows `256.0 MiB`. JSON output keeps exact byte counts.

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// Parses a size in bytes (a clap value parser).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let exp = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 1,
        "m" | "mb" | "mib" => 2,
        "g" | "gb" | "gib" => 3,
        "t" | "tb" | "tib" => 4,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; write bytes (4096) or a size like 256MiB, 1.5G"
            ));
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a size; write bytes (4096) or a size like 256MiB"))?;
    let bytes = n * 1024f64.powi(exp);
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("{s:?}: too large"));
    }
    Ok(bytes.round() as u64)
}

/// `1.5 GiB`, `512 B`: one decimal above bytes.
pub fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_people_write_them() {
        for (s, want) in [
            ("4096", 4096),
            ("256MiB", 256 << 20),
            ("256M", 256 << 20),
            ("256 mb", 256 << 20),
            ("1.5G", 3 << 29),
            ("2TiB", 2 << 40),
            ("7b", 7),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for bad in ["", "MiB", "12 parsecs", "1e9", "-5"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_print_with_binary_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(256 << 20), "256.0 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(parse_size(&human(256 << 20)).unwrap(), 256 << 20);
    }
}
