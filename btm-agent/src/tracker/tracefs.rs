//! Tracepoint record layouts from tracefs `format` files, and mounting tracefs/bpffs.
use std::{collections::HashMap, fs, path::Path};

use btm_common::config::RangeTp;

use super::TrackerError;

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mounts tracefs and bpffs where missing (they are not mounted at boot on every machine).
pub fn ensure_mounted() -> Result<(), TrackerError> {
    for (path, fstype) in [(TRACEFS, "tracefs"), (BPFFS, "bpf")] {
        if is_mountpoint_of(path, fstype) {
            continue;
        }
        tracing::info!("mounting {fstype} at {path}");
        nix::mount::mount(
            Some(fstype),
            path,
            Some(fstype),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| TrackerError::Mount {
            what: format!("{fstype} at {path}"),
            source: e.into(),
        })?;
    }
    Ok(())
}

fn is_mountpoint_of(path: &str, fstype: &str) -> bool {
    fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let _ = f.next();
                f.next() == Some(path) && f.next() == Some(fstype)
            })
        })
        .unwrap_or(false)
}

/// One tracepoint's `format` file.
pub struct Format {
    pub name: String,
    fields: HashMap<String, (u32, u32)>,
    print_fmt: String,
}

impl Format {
    pub fn exists(category: &str, name: &str) -> bool {
        Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(name)
            .join("format")
            .exists()
    }

    pub fn read(category: &str, name: &str) -> Result<Self, TrackerError> {
        let path = Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|_| TrackerError::MissingTracepoint {
            name: format!("{category}:{name}"),
        })?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    pub fn parse(name: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                print_fmt = rest.to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let (mut off, mut size) = (None, None);
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    off = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if decl.is_empty() {
                    decl = part;
                }
            }
            let fname = decl
                .rsplit([' ', '*'])
                .next()
                .unwrap_or("")
                .trim_end_matches(']');
            let fname = fname.split('[').next().unwrap_or("");
            if let (Some(o), Some(s)) = (off, size) {
                fields.insert(fname.to_string(), (o, s));
            }
        }
        Self {
            name: name.into(),
            fields,
            print_fmt,
        }
    }

    /// (offset, size) of a field, checking its size is one of `sizes`.
    pub fn field(&self, field: &str, sizes: &[u32]) -> Result<(u32, u32), TrackerError> {
        match self.fields.get(field) {
            Some(&(o, s)) if sizes.contains(&s) => Ok((o, s)),
            Some(&(_, s)) => Err(TrackerError::Format(format!(
                "{}: field {field} has size {s}, expected one of {sizes:?}",
                self.name
            ))),
            None => Err(TrackerError::Format(format!(
                "{}: no field {field}",
                self.name
            ))),
        }
    }

    /// A `__print_flags` value by its symbolic name, e.g. `WRITE` in
    /// `{ (1 << 0), "WRITE" }` or `{ 0x1, "WRITE" }`.
    pub fn flag(&self, symbol: &str) -> Result<u32, TrackerError> {
        let needle = format!("\"{symbol}\"");
        let err = || TrackerError::Format(format!("{}: flag {symbol} not in print fmt", self.name));
        let at = self.print_fmt.find(&needle).ok_or_else(err)?;
        let open = self.print_fmt[..at].rfind('{').ok_or_else(err)?;
        let expr = self.print_fmt[open + 1..at]
            .trim()
            .trim_end_matches(',')
            .trim();
        let expr = expr.trim_start_matches('(').trim_end_matches(')');
        if let Some((a, b)) = expr.split_once("<<") {
            let a: u32 = parse_int(a.trim().trim_matches(['(', ')'])).ok_or_else(err)?;
            let b: u32 = parse_int(b.trim().trim_matches(['(', ')'])).ok_or_else(err)?;
            Ok(a << b)
        } else {
            parse_int(expr).ok_or_else(err)
        }
    }

    /// The (dev, ino, pos, len[, flags]) layout shared by the range tracepoints we use.
    pub fn range(
        &self,
        pos: &str,
        len: Option<&str>,
        flags: Option<&str>,
    ) -> Result<RangeTp, TrackerError> {
        let (dev, _) = self.field("dev", &[4])?;
        let (ino, _) = self.field("ino", &[8])?;
        let (pos, _) = self.field(pos, &[8])?;
        let (len, len_size) = match len {
            Some(l) => self.field(l, &[4, 8])?,
            None => (0, 0),
        };
        let flags = match flags {
            Some(f) => self.field(f, &[4])?.0,
            None => u32::MAX,
        };
        Ok(RangeTp {
            dev,
            ino,
            pos,
            len,
            flags,
            len_size,
        })
    }
}

fn parse_int(s: &str) -> Option<u32> {
    let s = s.trim().trim_end_matches(['U', 'L', 'u', 'l']);
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOMAP: &str = r#"name: iomap_iter
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:dev_t dev;	offset:8;	size:4;	signed:0;
	field:u64 ino;	offset:16;	size:8;	signed:0;
	field:loff_t pos;	offset:24;	size:8;	signed:1;
	field:u64 length;	offset:32;	size:8;	signed:0;
	field:unsigned int flags;	offset:44;	size:4;	signed:0;

print fmt: "dev %d:%d flags %s", REC->dev, __print_flags(REC->flags, "|", { (1 << 0), "WRITE" }, { (1 << 1), "ZERO" }, { (1 << 3), "FAULT" }, { 0x10, "DIRECT" })
"#;

    #[test]
    fn parses_fields_and_flags() {
        let f = Format::parse("iomap:iomap_iter", IOMAP);
        let r = f.range("pos", Some("length"), Some("flags")).unwrap();
        assert_eq!(
            (r.dev, r.ino, r.pos, r.len, r.len_size, r.flags),
            (8, 16, 24, 32, 8, 44)
        );
        assert_eq!(f.flag("WRITE").unwrap(), 1);
        assert_eq!(f.flag("ZERO").unwrap(), 2);
        assert_eq!(f.flag("FAULT").unwrap(), 8);
        assert_eq!(f.flag("DIRECT").unwrap(), 16);
        assert!(f.flag("NOPE").is_err());
        assert!(f.field("ino", &[4]).is_err());
    }
}
