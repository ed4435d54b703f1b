//! Bad input gets an error that names the problem, never a panic: one test per case.

use dgate_rt::data::{parse_thresholds, Dataset};
use dgate_rt::model::Model;
use dgate_rt::weights::Weights;
use dgate_rt::{zoo, Error};

fn good() -> Weights {
    zoo::random("resnet20", 1).unwrap()
}

fn load_bytes(b: &[u8]) -> dgate_rt::Result<Model> {
    Model::from_weights(&Weights::from_bytes(b, "test.safetensors")?)
}

#[test]
fn truncated_safetensors_is_an_error() {
    let bytes = good().to_bytes().unwrap();
    for cut in [0, 5, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let e = load_bytes(&bytes[..cut]).unwrap_err();
        assert!(matches!(e, Error::Safetensors { .. }), "cut at {cut}: {e}");
        assert!(e.to_string().contains("test.safetensors"), "{e}");
    }
}

#[test]
fn corrupt_header_is_an_error() {
    let mut bytes = good().to_bytes().unwrap();
    bytes[9] = b'#';
    bytes[10] = b'!';
    let e = load_bytes(&bytes).unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let mut w = good();
    w.remove_prefix("layer2.1.bn1.running_var");
    let e = Model::from_weights(&w).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("layer2.1.bn1.running_var") && s.contains("missing"),
        "{s}"
    );
}

#[test]
fn misshaped_tensor_is_named_with_expected_shape() {
    let mut w = good();
    w.insert("layer1.1.bn2.weight", vec![15], vec![1.0; 15]);
    let s = Model::from_weights(&w).unwrap_err().to_string();
    assert!(
        s.contains("layer1.1.bn2.weight") && s.contains("[15]") && s.contains("[16]"),
        "{s}"
    );

    let mut w = good();
    w.insert(
        "layer2.0.conv2.weight",
        vec![32, 31, 3, 3],
        vec![0.1; 32 * 31 * 9],
    );
    let s = Model::from_weights(&w).unwrap_err().to_string();
    assert!(
        s.contains("layer2.0.conv2.weight") && s.contains("31"),
        "{s}"
    );

    let mut w = good();
    w.insert("linear.weight", vec![10, 63], vec![0.1; 630]);
    let s = Model::from_weights(&w).unwrap_err().to_string();
    assert!(s.contains("linear.weight") && s.contains("64"), "{s}");
}

#[test]
fn unrecognised_architecture_is_an_error() {
    let mut w = Weights::empty();
    w.file = "mlp.safetensors".into();
    w.insert("fc1.weight", vec![100, 3072], vec![0.0; 307200]);
    let e = Model::from_weights(&w).unwrap_err();
    assert!(matches!(e, Error::Architecture { .. }), "{e}");
    assert!(e.to_string().contains("fc1.weight"), "{e}");
}

#[test]
fn nan_and_infinite_weights_are_rejected() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w = good();
        let t = w.get("layer3.2.conv1.weight").unwrap().clone();
        let mut data = t.data.clone();
        data[7] = bad;
        w.insert("layer3.2.conv1.weight", t.shape.clone(), data);
        let bytes = w.to_bytes().unwrap();
        let s = load_bytes(&bytes).unwrap_err().to_string();
        assert!(
            s.contains("layer3.2.conv1.weight") && s.contains("element 7"),
            "{s}"
        );
    }
}

#[test]
fn data_file_of_partial_records_is_an_error() {
    let mut ds = Dataset::default();
    let e = ds
        .append_cifar_bytes(&vec![0u8; 3073 * 2 + 5], "short.bin", None)
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("short.bin") && s.contains("6151") && s.contains("3073"),
        "{s}"
    );
    let e = ds.append_cifar_bytes(&[], "empty.bin", None).unwrap_err();
    assert!(e.to_string().contains("empty.bin"));
    let mut rec = vec![0u8; 3073];
    rec[0] = 12;
    let e = ds.append_cifar_bytes(&rec, "label.bin", None).unwrap_err();
    assert!(e.to_string().contains("label 12"), "{e}");
}

#[test]
fn missing_data_file_is_named() {
    let e = Dataset::load_cifar(&["/nonexistent/batch.bin"], None).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/batch.bin"), "{e}");
}

#[test]
fn thresholds_of_wrong_length_are_rejected() {
    let mut w = good();
    let model = Model::from_weights(&w).unwrap();
    for (k, s) in [(0usize, 0usize), (1, 1)] {
        let c = model.plan.stages[s].output.channels;
        w.insert(
            &format!("gates.{k}.weight"),
            vec![10, c],
            vec![0.01; 10 * c],
        );
        w.insert(&format!("gates.{k}.bias"), vec![10], vec![0.0; 10]);
    }
    w.metadata.insert("gate_after".into(), "1,2".into());
    let mut m = Model::from_weights(&w).unwrap();
    assert_eq!(m.plan.gates.len(), 2);
    let e = m.plan.set_thresholds(&[1.0]).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 thresholds given but the model has 2 gate(s)"),
        "{e}"
    );
    assert!(m.plan.set_thresholds(&[1.0, 2.0, 3.0]).is_err());
    m.plan
        .set_thresholds(&[f32::INFINITY, f32::NEG_INFINITY])
        .unwrap();
    w.metadata.insert("thresholds".into(), "1.0".into());
    let e = Model::from_weights(&w).unwrap_err();
    assert!(e.to_string().contains("thresholds"), "{e}");
}

#[test]
fn threshold_lists_parse_inf_and_reject_garbage() {
    assert_eq!(
        parse_thresholds("1.5,inf,-inf").unwrap(),
        vec![1.5, f32::INFINITY, f32::NEG_INFINITY]
    );
    assert!(parse_thresholds("1.0,abc").unwrap_err().contains("abc"));
    assert!(parse_thresholds("nan").is_err());
}

#[test]
fn gate_of_wrong_width_is_named() {
    let mut w = good();
    w.insert("gates.0.weight", vec![10, 17], vec![0.0; 170]);
    w.insert("gates.0.bias", vec![10], vec![0.0; 10]);
    w.metadata.insert("gate_after".into(), "1".into());
    let s = Model::from_weights(&w).unwrap_err().to_string();
    assert!(
        s.contains("gates.0.weight") && s.contains("[10, 16]"),
        "{s}"
    );
}
