//! Files and directories only the gateway's own user may read: the data_dir
//! holds every tenant's cached answers and the request log (metadata, user
//! ids and, with `logs.payloads`, whole prompts and answers), so what aigw
//! creates there is 0700 (directories) and 0600 (files) whatever the umask,
//! as the admin socket is. A directory the operator made keeps its mode; the
//! files aigw owns in it (cache partitions, the lock, the SQLite store and
//! its `-wal` and `-shm`) are made private when opened, so a store from an
//! older release is closed too.
//!
//! Owns: those modes. Does not own what the files hold.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents, each 0700; an existing one is left
/// as it is.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Options that create a file 0600.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Makes an existing `path` 0600 (a file aigw owns, perhaps created by an
/// older release or another tool); one that does not exist is left so.
pub fn restrict(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o777 != FILE_MODE => {
            std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A SQLite store at `path`, private before SQLite opens it: created empty
/// 0600 when missing (SQLite makes its `-wal` and `-shm` with the mode of
/// the database file), made 0600 when present, and its `-wal` and `-shm`
/// too when present.
pub fn prepare_store(path: &Path) -> io::Result<()> {
    match options().write(true).create_new(true).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => restrict(path)?,
        Err(e) => return Err(e),
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        restrict(Path::new(&side))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn what_aigw_creates_only_its_user_reads_whatever_the_umask() {
        let base = std::env::temp_dir().join(format!("aigw-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.join("a")), 0o700);
        let f = dir.join("f");
        options().write(true).create(true).open(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        // A store and its side files from before: made private.
        let db = dir.join("s.db");
        for p in [db.clone(), dir.join("s.db-wal")] {
            std::fs::write(&p, b"").unwrap();
            std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        }
        prepare_store(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("s.db-wal")), 0o600);
        assert!(!dir.join("s.db-shm").exists());
        let fresh = dir.join("new.db");
        prepare_store(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
