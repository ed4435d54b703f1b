//! `scripts/device-run.sh` decides, from `gpu-check`'s log, which kernels the rest of a
//! device call runs without: `DGATE_TMA=0` when the TMA tiles fail (or the check ends
//! right after one of theirs), `DGATE_WGMMA=0` when the wgmma tiles fail or the check
//! ends abnormally elsewhere. A device call is scarce, so that block is run here on
//! made-up logs (bash only, no GPU).

use std::process::Command;

/// The script's fallback block, between its `>>> fallback` and `<<< fallback` lines.
fn fallback_block() -> String {
    let script = include_str!("../scripts/device-run.sh");
    let start = script.find("# >>> fallback").expect("start marker");
    let end = script.find("# <<< fallback").expect("end marker");
    script[start..end].to_string()
}

/// (DGATE_TMA, DGATE_WGMMA) after the block, for a log and gpu-check's exit status.
fn decide(log: &str, rc: i32) -> (String, String) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dgate-fallback-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gpu-check.log"), log).unwrap();
    let body = format!(
        "stamp() {{ :; }}\nOUT={}\ncheck_rc={rc}\n{}\necho \"${{DGATE_TMA:-on}} ${{DGATE_WGMMA:-on}}\"\n",
        dir.display(),
        fallback_block()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(body)
        .output()
        .expect("bash");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    )
}

#[test]
fn a_tma_fault_or_failure_drops_only_the_tma_tiles() {
    let fault = "ok   conv_halo64_f16 a\nok   conv_tma128x256_f16 b\n\
                 error: CUDA error: conv_tma128x256_f16 on 72->200 n=1: unspecified launch failure\n";
    assert_eq!(decide(fault, 2), ("0".into(), "on".into()));
    let fail = "ok   conv_halo64_f16 a\nFAIL conv_tma128x64_f16 b\nok   conv_mma_f16 c\n";
    assert_eq!(decide(fail, 1), ("0".into(), "on".into()));
}

#[test]
fn a_wgmma_failure_or_an_abnormal_end_elsewhere_drops_every_wgmma_kernel() {
    let fail = "ok   conv_halo64_f16 a\nFAIL conv_wg128x64_f16 b\n";
    assert_eq!(decide(fail, 1), ("on".into(), "0".into()));
    let crash = "ok   conv_tma128x64_f16 a\nok   pass tuned b\nerror: something\n";
    assert_eq!(decide(crash, 2), ("on".into(), "0".into()));
}

#[test]
fn a_passing_check_or_another_failure_keeps_them() {
    assert_eq!(
        decide("ok   conv_tma128x64_f16 a\n", 0),
        ("on".into(), "on".into())
    );
    let other = "ok   conv_tma128x64_f16 a\nFAIL real data resnet56 f16 accuracy\nok   pass b\n";
    assert_eq!(decide(other, 1), ("on".into(), "on".into()));
}
