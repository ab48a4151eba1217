//! Kubernetes resource quantities (`128Mi`, `500m`, `1.5`, `1e3`), as the
//! API's `resource.Quantity` parses them, for memory bytes and CPU millis.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// The quantity times 1000 (milli-units), rounded up as the kubelet does.
pub fn parse_milli(s: &str) -> Result<i128, QuantityError> {
    let bad = || QuantityError(s.to_string());
    let s = s.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num.starts_with('-') {
        return Err(bad());
    }
    let num = num.trim_start_matches('+');
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // value = digits / 10^frac.len() * mult; mult as (numerator, 10^exp)
    let digits: i128 = format!("{int}{frac}").parse().map_err(|_| bad())?;
    let (bin, dec_exp): (i128, i32) = match suffix {
        "" => (1, 0),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<i32>().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    // milli: one more factor of 10^3.
    let exp = dec_exp + 3 - frac.len() as i32;
    let scaled = digits.checked_mul(bin).ok_or_else(bad)?;
    if exp >= 0 {
        let p = 10i128.checked_pow(exp as u32).ok_or_else(bad)?;
        scaled.checked_mul(p).ok_or_else(bad)
    } else {
        let p = 10i128.checked_pow((-exp) as u32).ok_or_else(bad)?;
        Ok((scaled + p - 1) / p)
    }
}

/// Whole units (bytes for memory), rounded up.
pub fn parse_units(s: &str) -> Result<i128, QuantityError> {
    Ok((parse_milli(s)? + 999) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_api_forms() {
        assert_eq!(parse_units("128Mi"), Ok(128 << 20));
        assert_eq!(parse_units("1G"), Ok(1_000_000_000));
        assert_eq!(parse_units("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_units("1e3"), Ok(1000));
        assert_eq!(parse_milli("500m"), Ok(500));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_milli("0.1"), Ok(100));
        assert_eq!(parse_milli("1.0005"), Ok(1001));
        for bad in ["", "abc", "-1", "1Xi", "1.2.3", "Mi"] {
            assert!(parse_milli(bad).is_err(), "{bad}");
        }
    }
}
