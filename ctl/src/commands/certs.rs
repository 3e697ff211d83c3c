//! `hostplanectl certs ca|server|agent|client`: see [`crate::certs`].
use crate::certs::{self, Ca, Leaf, Validity};
use crate::cli::{CertArgs, CertsCmd};
use crate::commands::{Out, emit};
use crate::error::Error;

pub async fn run(cmd: CertsCmd, out: &mut Out) -> Result<u8, Error> {
    let written = match cmd {
        CertsCmd::Ca {
            out: dir,
            name,
            days,
            force,
        } => {
            check_days(days)?;
            let (_, pair) = Ca::generate(&name, Validity::days(days))?;
            let (crt, key) = certs::write_pair(&dir, "ca", &pair, force)?;
            vec![crt, key]
        }
        CertsCmd::Server { common, names, ips } => issue(&common, &Leaf::Server { names, ips })?,
        CertsCmd::Agent { common, node } => issue(&common, &Leaf::Agent { node })?,
        CertsCmd::Client { common, name } => issue(&common, &Leaf::Client { name })?,
    };
    for p in written {
        emit(out, &format!("wrote {}\n", p.display())).await?;
    }
    Ok(crate::error::exit::OK)
}

fn check_days(days: u32) -> Result<(), Error> {
    if days == 0 {
        return Err(Error::Usage {
            reason: "--days must be at least 1".into(),
        });
    }
    Ok(())
}

fn issue(a: &CertArgs, leaf: &Leaf) -> Result<Vec<std::path::PathBuf>, Error> {
    check_days(a.days)?;
    let ca = Ca::load(&a.ca)?;
    let pair = ca.issue(leaf, Validity::days(a.days))?;
    let dir = a.out.as_ref().unwrap_or(&a.ca);
    let (crt, key) = certs::write_pair(dir, &leaf.file_stem(), &pair, a.force)?;
    Ok(vec![crt, key])
}
