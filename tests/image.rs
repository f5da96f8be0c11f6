//! `scripts/image` builds a loadable docker-archive of this binary, and the
//! Containerfile describes the same image (paths, user, entrypoint).

use std::path::Path;
use std::process::Command;

fn tar_member(tar: &Path, member: &str) -> String {
    let out = Command::new("tar")
        .arg("xOf")
        .arg(tar)
        .arg(member)
        .output()
        .expect("tar");
    assert!(out.status.success(), "no {member} in {}", tar.display());
    String::from_utf8(out.stdout).expect("UTF-8 member")
}

fn tar_list(tar: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("tf")
        .arg(tar)
        .output()
        .expect("tar");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn scripts_image_builds_the_operator_image_that_the_containerfile_describes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for tool in ["jq", "nft"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tool} missing (run scripts/setup)"
            );
            eprintln!("SKIPPED: {tool} not installed (run scripts/setup)");
            return;
        }
    }
    let out = std::env::temp_dir().join(format!("vpno-image-test-{}", std::process::id()));
    let status = Command::new(root.join("scripts/image"))
        .arg("--out")
        .arg(&out)
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_vpn-operator"))
        .arg("--catalog")
        .arg(root.join("crates/catalog/testdata/single-file/servers.json"))
        .arg("vpn-operator")
        .status()
        .expect("running scripts/image");
    assert!(status.success());
    let tar = out.join("vpn-operator.tar");
    let manifest: serde_json::Value =
        serde_json::from_str(&tar_member(&tar, "manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], "localhost/vpn-operator:dev");
    let config: serde_json::Value =
        serde_json::from_str(&tar_member(&tar, manifest[0]["Config"].as_str().unwrap())).unwrap();
    let layer = manifest[0]["Layers"][0].as_str().unwrap().to_string();
    let files = {
        let dir = out.join("unpacked");
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("tar")
            .arg("xf")
            .arg(&tar)
            .arg("-C")
            .arg(&dir)
            .arg(&layer)
            .status()
            .unwrap();
        assert!(st.success());
        tar_list(&dir.join(&layer))
    };
    let _ = std::fs::remove_dir_all(&out);
    for f in [
        "./usr/local/bin/vpn-operator",
        "./usr/sbin/nft",
        "./etc/passwd",
        "./usr/share/vpn-operator/servers.json.xz",
        "./lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(
            files.iter().any(|x| x == f),
            "{f} missing from the image: {files:?}"
        );
    }
    assert!(
        !files.iter().any(|x| x == "./bin/sh"),
        "the operator image needs no shell"
    );
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/vpn-operator"])
    );
    assert_eq!(c["Cmd"], serde_json::json!(["controller"]));
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(1)
    );

    let containerfile = std::fs::read_to_string(root.join("Containerfile")).unwrap();
    for line in [
        "USER 65532:65532",
        r#"ENTRYPOINT ["/usr/local/bin/vpn-operator"]"#,
        r#"CMD ["controller"]"#,
        "COPY --from=build /out/vpn-operator /usr/local/bin/vpn-operator",
        "COPY --from=build /out/servers.json.xz /usr/share/vpn-operator/servers.json.xz",
        "nftables",
    ] {
        assert!(containerfile.contains(line), "Containerfile lacks {line:?}");
    }
}
