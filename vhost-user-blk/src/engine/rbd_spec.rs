//! `--blk-file rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=NAME]`: a Ceph RBD
//! image named the way QEMU's legacy `rbd:` filename names it (what
//! operators already type for `-drive file=rbd:...` and qemu-img), so a
//! disk moves between QEMU and this daemon with the same string. Of QEMU's
//! `:key=value` options only `conf` and `id` are taken; any other key is
//! refused (Ceph options belong in the ceph.conf file).

use std::path::PathBuf;

/// The prefix that makes `--blk-file` an RBD image.
pub const PREFIX: &str = "rbd:";

/// A malformed `rbd:` name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// No `POOL/IMAGE`.
    #[error("rbd: names POOL/IMAGE[@SNAP][:conf=PATH][:id=NAME], got {0:?}")]
    Shape(String),
    /// An option other than conf and id.
    #[error("rbd: option {0:?} is not supported (only conf= and id=)")]
    Option(String),
    /// A NUL byte or an empty part.
    #[error("rbd: {0} is empty or contains a NUL byte")]
    Empty(&'static str),
}

/// A parsed `rbd:` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    /// RADOS pool.
    pub pool: String,
    /// Image name.
    pub image: String,
    /// Snapshot (served read-only).
    pub snap: Option<String>,
    /// ceph.conf (default: librados' search, /etc/ceph/ceph.conf first).
    pub conf: Option<PathBuf>,
    /// Client id without `client.` (default: admin).
    pub id: Option<String>,
}

fn part(s: &str, what: &'static str) -> Result<String, SpecError> {
    if s.is_empty() || s.contains('\0') {
        return Err(SpecError::Empty(what));
    }
    Ok(s.to_string())
}

impl RbdSpec {
    /// `name` as an RBD image; `Ok(None)` if it does not start with `rbd:`.
    pub fn parse(name: &str) -> Result<Option<RbdSpec>, SpecError> {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return Ok(None);
        };
        let mut fields = rest.split(':');
        let target = fields.next().unwrap_or_default();
        let Some((pool, image)) = target.split_once('/') else {
            return Err(SpecError::Shape(name.to_string()));
        };
        let (image, snap) = match image.split_once('@') {
            Some((i, s)) => (i, Some(part(s, "the snapshot")?)),
            None => (image, None),
        };
        let mut spec = RbdSpec {
            pool: part(pool, "the pool")?,
            image: part(image, "the image")?,
            snap,
            conf: None,
            id: None,
        };
        for field in fields {
            match field.split_once('=') {
                Some(("conf", v)) => spec.conf = Some(PathBuf::from(part(v, "conf=")?)),
                Some(("id", v)) => spec.id = Some(part(v, "id=")?),
                _ => return Err(SpecError::Option(field.to_string())),
            }
        }
        Ok(Some(spec))
    }

    /// `POOL/IMAGE[@SNAP]`, for logs and errors.
    pub fn name(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}/{}@{s}", self.pool, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_style_names() {
        assert_eq!(RbdSpec::parse("/var/disk.img"), Ok(None));
        let s = RbdSpec::parse("rbd:pool/img").unwrap().unwrap();
        assert_eq!((s.pool.as_str(), s.image.as_str()), ("pool", "img"));
        assert_eq!((s.snap, s.conf, s.id), (None, None, None));
        let s = RbdSpec::parse("rbd:p/i@snap1:conf=/etc/c.conf:id=viaduct")
            .unwrap()
            .unwrap();
        assert_eq!(s.snap.as_deref(), Some("snap1"));
        assert_eq!(s.conf, Some(PathBuf::from("/etc/c.conf")));
        assert_eq!(s.id.as_deref(), Some("viaduct"));
        assert_eq!(s.name(), "p/i@snap1");
    }

    #[test]
    fn malformed_names_are_refused() {
        assert!(matches!(
            RbdSpec::parse("rbd:img"),
            Err(SpecError::Shape(_))
        ));
        assert_eq!(
            RbdSpec::parse("rbd:/img"),
            Err(SpecError::Empty("the pool"))
        );
        assert_eq!(RbdSpec::parse("rbd:p/"), Err(SpecError::Empty("the image")));
        assert_eq!(
            RbdSpec::parse("rbd:p/i@"),
            Err(SpecError::Empty("the snapshot"))
        );
        assert_eq!(
            RbdSpec::parse("rbd:p/i:mon_host=1.2.3.4"),
            Err(SpecError::Option("mon_host=1.2.3.4".into()))
        );
        assert_eq!(
            RbdSpec::parse("rbd:p/i:conf="),
            Err(SpecError::Empty("conf="))
        );
    }
}
