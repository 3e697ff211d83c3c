//! The bf.cfg shape check: a table of accepted and refused files, and a
//! property against the installer's own check (`bash -n`): whatever this
//! check accepts, bash accepts too.

use proptest::prelude::*;

use super::*;

#[test]
fn accepted() {
    for text in [
        "",
        "# only a comment\n\n",
        "BFB_ADD_ON=\n",
        "ubuntu_PASSWORD='$1$x$y'\nHOSTNAME=dpu-0\n",
        "export A=1\nB=\"two words $HOME ${X:-d} $(date +%s) `id -u`\"\n",
        "A=1 B=2 # two assignments\n",
        "A=1; B=2;\n",
        "MULTI='line one\nline two with \" and |'\n",
        "ARR=(a 'b c'\n  d)\n",
        "P=/usr/bin:/bin X=a\\ b\n",
        "A+=more\n",
        "bfb_modify_os()\n{\n  echo 'hi' > /mnt/etc/motd\n  if [ -n \"$X\" ]; then { echo x; }; fi\n}\n",
        "bfb_pre_install() { echo hi; }\n",
        "function bfb_post_install {\n  cat > /tmp/f <<'EOF'\nit's 'unbalanced here \"\nEOF\n  cat <<-END\n\tx'\n\tEND\n}\n",
        "f() {\n  case $1 in\n    a) echo a ;;\n    *) echo other ;;\n  esac\n}\n",
        "f() {\n  # a comment with a ' quote\n  echo \"}\"\n}\n",
    ] {
        assert_eq!(check(text), Ok(()), "{text:?}");
    }
}

#[test]
fn refused_naming_the_line() {
    for (text, line, needle) in [
        ("A=1\nB='open\nC=3\n", 2, "unterminated single quote"),
        ("A=\"open\n", 1, "unterminated double quote"),
        (
            "A=1\necho hi\n",
            2,
            "not an assignment (NAME=value) or a function: \"echo hi\"",
        ),
        ("A=1\n=x\n", 2, "not an assignment"),
        ("1A=x\n", 1, "not an assignment"),
        ("A=1 echo hi\n", 1, "not an assignment"),
        ("A=a|b\n", 1, "unquoted `|` in the value of A"),
        ("A=x)\n", 1, "unquoted `)`"),
        ("A=x > /tmp/f\n", 1, "not an assignment"),
        ("A=$(date\n", 1, "unterminated `$(`"),
        ("A=`id\n", 1, "unterminated backquote"),
        ("f() {\n  echo hi\n", 1, "without its closing `}`"),
        ("f() { }\n", 1, "no command"),
        ("fi() { echo; }\n", 1, "reserved word"),
        ("f() {\n  A=)\n}\n", 2, "closes nothing"),
        ("f() {\n  echo (\n}\n", 1, "never closed"),
        ("f()\necho\n", 1, "followed by `{`"),
        (
            "f() {\n  cat <<EOF\n  x\n}\n",
            2,
            "here-document without its closing line `EOF`",
        ),
        ("ARR=(a b\n", 1, "no closing `)`"),
        // Once an endless loop (found by accepted_files_pass_bash_n).
        ("ARR=(a ; b)\n", 1, "unquoted `;` in the array assigned to ARR"),
        ("X=1\nARR=(a;b)\n", 2, "unquoted `;` in the array"),
        ("; A=1\n", 1, "`;`"),
        ("A=1\n\nif true; then B=2; fi\n", 3, "not an assignment"),
    ] {
        let e = check(text).expect_err(text);
        assert_eq!(e.line, line, "{text:?}: {e:?}");
        assert!(e.problem.contains(needle), "{text:?}: {e:?}");
    }
}

const NAME: &str = "[A-Za-z_][A-Za-z0-9_]{0,8}";

/// A function name: a name that is not one of bash's reserved words.
fn fname() -> impl Strategy<Value = String> {
    NAME.prop_filter("reserved word", |n| !RESERVED.contains(&n.as_str()))
}
const PLAIN: &str = "[A-Za-z0-9_./:,=+-]{0,12}";
const ANY: &str = "[ -~\n]{0,20}";

/// Pieces of valid bf.cfg files, as operators write them.
fn good_piece() -> impl Strategy<Value = String> {
    let (name, plain, any) = (NAME, PLAIN, ANY);
    prop_oneof![
        Just(String::new()),
        "#[ -~]{0,20}".prop_map(|c| c),
        (name, plain).prop_map(|(n, v)| format!("{n}={v}")),
        (name, plain).prop_map(|(n, v)| format!("export {n}={v}")),
        (name, "[^'\\x00]{0,20}").prop_map(|(n, v)| format!("{n}='{v}'")),
        (name, "[^\"\\\\$`\\x00]{0,20}").prop_map(|(n, v)| format!("{n}=\"{v}\"")),
        (name, plain, plain).prop_map(|(n, a, b)| format!("{n}=({a} '{b}')")),
        (fname(), plain).prop_map(|(n, v)| format!("{n}() {{\n  echo '{v}'\n}}")),
        (fname(), plain).prop_map(|(n, v)| format!(
            "{n}() {{\n  case \"$1\" in\n    {v}x) echo a ;;\n    *) echo b ;;\n  esac\n}}"
        )),
        (fname(), any).prop_map(|(n, v)| format!(
            "function {n} {{\n  cat <<'EOF'\n{}\nEOF\n}}",
            v.replace("EOF", "E0F")
        )),
    ]
}

/// Pieces of bf.cfg files, right or wrong. (Not an unclosed function body or
/// `$(`: what follows would be shell code, which is checked for balance only —
/// the `bash -n` run in [`super::super::load_raw`] checks its grammar. The
/// table above covers those.)
fn piece() -> impl Strategy<Value = String> {
    let (name, plain, any) = (NAME, PLAIN, ANY);
    prop_oneof![
        good_piece(),
        (name, "[^'\\x00]{0,10}").prop_map(|(n, v)| format!("{n}='{v}")),
        (name, "[^\"\\x00]{0,10}").prop_map(|(n, v)| format!("{n}=\"{v}")),
        (name, any).prop_map(|(n, v)| format!("{n}={v}")),
        any.prop_map(|v| v),
        (name, plain).prop_map(|(n, v)| format!("{n}={v})")),
    ]
}

fn bash_accepts(dir: &std::path::Path, text: &str) -> Option<bool> {
    let f = dir.join("bf.cfg");
    std::fs::write(&f, text).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(&f)
        .output()
        .ok()?;
    Some(out.status.success())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the check accepts, `bash -n` (the installer's check) accepts.
    #[test]
    fn accepted_files_pass_bash_n(pieces in proptest::collection::vec(piece(), 0..8)) {
        let text = pieces.join("\n") + "\n";
        let dir = tempfile::tempdir().unwrap();
        if check(&text).is_ok() {
            match bash_accepts(dir.path(), &text) {
                Some(ok) => prop_assert!(ok, "accepted, but bash -n refuses:\n{text}"),
                None => eprintln!("skipping the bash -n cross-check: bash is not installed"),
            }
        }
    }

    /// Files made only of valid pieces are accepted (and bash agrees).
    #[test]
    fn valid_files_are_accepted(pieces in proptest::collection::vec(good_piece(), 0..8)) {
        let text = pieces.join("\n") + "\n";
        prop_assert_eq!(check(&text), Ok(()), "{}", text);
        let dir = tempfile::tempdir().unwrap();
        if let Some(ok) = bash_accepts(dir.path(), &text) {
            prop_assert!(ok, "a valid piece that bash -n refuses:\n{}", text);
        }
    }
}
