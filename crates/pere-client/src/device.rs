//! The default device id a tool keeps per user, in a small file under the user's config
//! directory: successive runs are one device, so one recipient, not a new recipient per run that
//! the server expects receipts from until `--recipient-expiry`.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use pere_proto::DeviceId;

/// The file that keeps a subscriber's default device id: `$XDG_CONFIG_HOME/pere/device-id`, else
/// `$HOME/.config/pere/device-id`; none when neither names an absolute directory.
pub fn default_file() -> Option<PathBuf> {
    let dir = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let config = dir("XDG_CONFIG_HOME").or_else(|| dir("HOME").map(|home| home.join(".config")))?;
    Some(config.join("pere").join("device-id"))
}

/// The device id kept in `file`; on first use, `fresh()` is written there and returned. Two
/// tools starting at once agree: the file is created whole (written aside, then linked in place
/// only if still absent), and both read what is there.
///
/// # Errors
/// A message naming the file when it cannot be read or created, or holds no valid device id.
pub fn kept(file: &Path, fresh: impl FnOnce() -> String) -> Result<String, String> {
    if let Some(id) = read(file)? {
        return Ok(id);
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let cannot = |e: std::io::Error| format!("cannot keep a device id in {}: {e}", file.display());
    fs::create_dir_all(dir).map_err(cannot)?;
    let aside = dir.join(format!(".device-id.{}", std::process::id()));
    fs::write(&aside, format!("{}\n", fresh())).map_err(cannot)?;
    let linked = match fs::hard_link(&aside, file) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        // A file system without hard links: move it in place (a race there is only a lost id).
        Err(_) => fs::rename(&aside, file),
        Ok(()) => Ok(()),
    };
    let _ = fs::remove_file(&aside);
    linked.map_err(cannot)?;
    read(file)?.ok_or_else(|| format!("cannot keep a device id in {}", file.display()))
}

fn read(file: &Path) -> Result<Option<String>, String> {
    match fs::read_to_string(file) {
        Ok(text) => {
            let id = text.trim();
            DeviceId::new(id).map_err(|e| {
                format!(
                    "{} holds no device id ({e}): remove it or fix it",
                    file.display()
                )
            })?;
            Ok(Some(id.to_owned()))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read the device id in {}: {e}",
            file.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_is_kept_and_a_bad_file_is_named() {
        let dir = std::env::temp_dir().join(format!("pere-device-test-{}", std::process::id()));
        let file = dir.join("pere").join("device-id");
        assert_eq!(
            kept(&file, || "H0039000000001".into()).unwrap(),
            "H0039000000001"
        );
        assert_eq!(
            kept(&file, || "H0039000000002".into()).unwrap(),
            "H0039000000001"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "H0039000000001\n");
        fs::write(&file, "not a/device\n").unwrap();
        let err = kept(&file, || "H0039000000003".into()).unwrap_err();
        assert!(
            err.contains("device-id") && err.contains("no device id"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
