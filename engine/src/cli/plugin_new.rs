//! `weft plugin new NAME --lang rust|python|js` (a connector project that
//! builds with one command and passes `weft plugin check --sandbox` as it
//! is) and `weft plugin wit --out DIR` (the contract's WIT).
//!
//! The projects are the files under `engine/templates/plugin/`, compiled
//! in; the tool versions they pin are the ones CI installs and tests
//! (`.ci/python-tools.txt`, the repository's `package.json`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

/// The contract every generated project builds against.
pub(crate) const CONNECTOR_WIT: &str = include_str!("../../../wit/v0.1.0/connector.wit");
/// 0.2.0: 0.1.0's world plus the optional `lookup` interface.
const CONNECTOR_WIT_0_2: &str = include_str!("../../../wit/v0.2.0/connector.wit");

/// componentize-py, from PyPI (also in `.ci/python-tools.txt`).
pub(crate) const COMPONENTIZE_PY: &str = "0.25.1";
/// `@bytecodealliance/componentize-js`, from npm (also in `package.json`).
pub(crate) const COMPONENTIZE_JS: &str = "0.23.0";
/// `@bytecodealliance/preview2-shim`: componentize-js 0.23 loads it at
/// build time but declares it only as a dev dependency.
pub(crate) const PREVIEW2_SHIM: &str = "0.17.9";
/// wit-bindgen for Rust connectors (the version the SDK builds with).
pub(crate) const WIT_BINDGEN: &str = "0.63.0";
/// Rust for Rust connectors (`rust-toolchain.toml`).
pub(crate) const RUST: &str = "1.95.0";

/// A connector's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    /// Rust, with wit-bindgen.
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
}

/// A template file: its path in the project, its text, whether it runs.
type TemplateFile = (&'static str, &'static str, bool);

macro_rules! template {
    ($lang:literal, $path:literal) => {
        template!($lang, $path, $path, false)
    };
    ($lang:literal, $path:literal, exec) => {
        template!($lang, $path, $path, true)
    };
    ($lang:literal, $source:literal, $path:literal, $exec:literal) => {
        ($path, include_str!(concat!("../../templates/plugin/", $lang, "/", $source)), $exec)
    };
}

const PYTHON: &[TemplateFile] = &[
    template!("python", "app.py"),
    template!("python", "weft.py"),
    template!("python", "test_app.py"),
    template!("python", "build.sh", exec),
    template!("python", "test.sh", exec),
    template!("python", "requirements-build.txt"),
    template!("python", "workflow.toml"),
    template!("python", "README.md"),
    template!("python", "gitignore", ".gitignore", false),
];

const JS: &[TemplateFile] = &[
    template!("js", "app.js"),
    template!("js", "weft.js"),
    template!("js", "test/app.test.mjs"),
    template!("js", "test/fake-host.mjs"),
    template!("js", "test/hooks.mjs"),
    template!("js", "test/register.mjs"),
    template!("js", "package.json"),
    template!("js", "workflow.toml"),
    template!("js", "README.md"),
    template!("js", "gitignore", ".gitignore", false),
];

const RUST_FILES: &[TemplateFile] = &[
    template!("rust", "Cargo.toml"),
    template!("rust", "rust-toolchain.toml"),
    template!("rust", "src/lib.rs"),
    template!("rust", "src/weft.rs"),
    template!("rust", "build.sh", exec),
    template!("rust", "workflow.toml"),
    template!("rust", "README.md"),
    template!("rust", "gitignore", ".gitignore", false),
];

/// Whether `name` may name a connector: lower-case ASCII letters, digits
/// and single hyphens, starting with a letter, at most 64 characters (it
/// becomes a file name, a package name and a workflow key).
fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "{name:?} cannot name a connector: use lower-case letters, digits and single hyphens, starting with a letter (at most 64), e.g. `acme-crm`"
        );
    }
    Ok(())
}

/// The project's files for `name` in `lang`, placeholders filled.
pub(crate) fn project_files(name: &str, lang: Lang) -> Vec<(PathBuf, String, bool)> {
    let files = match lang {
        Lang::Rust => RUST_FILES,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    let env = name.to_ascii_uppercase().replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{env}}", &env)
            .replace("{{componentize_py}}", COMPONENTIZE_PY)
            .replace("{{componentize_js}}", COMPONENTIZE_JS)
            .replace("{{preview2_shim}}", PREVIEW2_SHIM)
            .replace("{{wit_bindgen}}", WIT_BINDGEN)
            .replace("{{rust}}", RUST)
    };
    let mut out: Vec<(PathBuf, String, bool)> =
        files.iter().map(|(path, text, exec)| (PathBuf::from(path), fill(text), *exec)).collect();
    out.push((PathBuf::from("wit/connector.wit"), CONNECTOR_WIT.to_owned(), false));
    out
}

/// `weft plugin new`.
pub(crate) fn new_project(name: &str, lang: Lang, dir: Option<&Path>) -> Result<ExitCode> {
    check_name(name)?;
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if root.exists()
        && std::fs::read_dir(&root)
            .with_context(|| format!("cannot read {}", root.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty: choose another name or --dir", root.display());
    }
    for (path, text, executable) in project_files(name, lang) {
        write_file(&root.join(path), &text, executable)?;
    }
    let (build, test) = match lang {
        Lang::Rust => ("./build.sh", "cargo test"),
        Lang::Python => ("pip install -r requirements-build.txt && ./build.sh", "./test.sh"),
        Lang::Js => ("npm install && npm run build", "npm test"),
    };
    let language = match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    };
    outln!("wrote {} ({language} connector {name})", root.display())?;
    outln!("  build:  cd {} && {build}", root.display())?;
    outln!("  test:   {test}")?;
    outln!("  check:  weft plugin check {name}.wasm --sandbox --emulator stripe")?;
    Ok(ExitCode::SUCCESS)
}

/// `weft plugin wit`: 0.1.0 alone, or 0.2.0 with the 0.1.0 it includes
/// under `deps/`, where WIT tools (wit-bindgen, componentize-py,
/// componentize-js) look for the packages a package uses.
pub(crate) fn write_wit(out: &Path, version: &str) -> Result<ExitCode> {
    let path = out.join("connector.wit");
    if version == "0.2.0" {
        write_file(&path, CONNECTOR_WIT_0_2, false)?;
        let deps = out.join("deps").join("connector-0.1.0").join("connector.wit");
        write_file(&deps, CONNECTOR_WIT, false)?;
        outln!(
            "wrote {} (weft:connector@0.2.0, world `connector`) and {}",
            path.display(),
            deps.display()
        )?;
    } else {
        write_file(&path, CONNECTOR_WIT, false)?;
        outln!("wrote {} (weft:connector@0.1.0, world `connector`)", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, text: &str, executable: bool) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))?;
    #[cfg(unix)]
    if executable {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("failed to make {} executable", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = executable;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_file_and_package_names_are_refused() {
        for bad in ["", "Acme", "1acme", "acme_crm", "acme-", "a--b", "acme crm", "../x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["acme", "acme-crm", "a2"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for (path, text, _) in project_files("acme-crm", lang) {
                assert!(!text.contains("{{"), "{lang:?} {}: {text}", path.display());
            }
        }
    }

    #[test]
    fn the_pins_are_the_versions_ci_installs() {
        let python = include_str!("../../../.ci/python-tools.txt");
        assert!(
            python.lines().any(|line| line == format!("componentize-py=={COMPONENTIZE_PY}")),
            "{python}"
        );
        let package: serde_json::Value =
            serde_json::from_str(include_str!("../../../package.json")).unwrap_or_default();
        let dev = &package["devDependencies"];
        assert_eq!(dev["@bytecodealliance/componentize-js"], COMPONENTIZE_JS);
        assert_eq!(dev["@bytecodealliance/preview2-shim"], PREVIEW2_SHIM);
        let lock = include_str!("../../../Cargo.lock");
        assert!(lock.contains(&format!("name = \"wit-bindgen\"\nversion = \"{WIT_BINDGEN}\"")));
        let toolchain = include_str!("../../../rust-toolchain.toml");
        assert!(toolchain.contains(&format!("channel = \"{RUST}\"")), "{toolchain}");
    }
}
