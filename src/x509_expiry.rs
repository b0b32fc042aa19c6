//! The one thing ccgate reads from its own certificate: when it expires (`notAfter`), for
//! `ccgate_tls_certificate_expiry_timestamp_seconds`. A walk over the DER to the validity field, not an
//! X.509 parser: rustls has already parsed and accepted the certificate, and this only has
//! to find one field in it, so a new dependency is not worth it. Anything unexpected is
//! `None` (the gauge is then absent), never a panic.

/// `notAfter` of a DER certificate, as Unix seconds.
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = tlv(cert_der)? else { return None };
    let (0x30, tbs, _) = tlv(cert)? else { return None };
    // TBSCertificate: [0] version (optional), serialNumber, signature, issuer, validity, ...
    let (tag, _, after_version) = tlv(tbs)?;
    let rest = if tag == 0xa0 { after_version } else { tbs };
    let (_, _, rest) = tlv(rest)?; // serialNumber
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (0x30, validity, _) = tlv(rest)? else { return None };
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    parse_time(tag, time)
}

/// One DER tag-length-value: (tag, value, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |l, b| l << 8 | *b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as
/// RFC 5280 §4.1.2.5 requires them: UTC, seconds, no fraction.
fn parse_time(tag: u8, t: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |n, c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let (year, rest) = match (tag, t.len()) {
        (0x17, 13) => {
            let yy = digits(&t[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &t[2..])
        }
        (0x18, 15) => (digits(&t[..4])?, &t[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let f = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, min, sec) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm); the
/// webhooks' replay reads its RFC 3339 `since` with it too.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_not_after_in_both_time_forms() {
        // 2030: UTCTime; 2051: GeneralizedTime (RFC 5280 switches at 2050).
        assert_eq!(not_after(&cert(2030, 1, 2)), Some(1_893_542_400));
        assert_eq!(not_after(&cert(2051, 6, 1)), Some(2_569_190_400));
    }

    #[test]
    fn anything_else_is_none() {
        let good = cert(2030, 1, 2);
        for cut in [0, 1, 2, 10, good.len() / 2] {
            assert_eq!(not_after(&good[..cut]), None, "{cut}");
        }
        assert_eq!(not_after(b"not a certificate"), None);
        assert_eq!(parse_time(0x17, b"3001021200Z"), None);
        assert_eq!(parse_time(0x17, b"301302000000Z"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
