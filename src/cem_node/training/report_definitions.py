"""The fixed texts of the evaluation report: titles, definitions, the paper's headline.

Shared by :mod:`cem_node.training.report` (the document and the figures) and
:mod:`cem_node.training.report_markdown` (``report.md``).
"""

from __future__ import annotations

__all__ = [
    "BOOTSTRAP_BY_PATIENT",
    "CLASSIFICATION_MEASURES",
    "DEFINITIONS",
    "MEASURE_TITLES",
    "MODEL_TITLES",
    "MODE_TITLES",
    "PAPER_HEADLINE",
]

MODE_TITLES = {
    "manual": "Manual (ground-truth) masks",
    "dl": "DL masks: detections matched to a lesion",
    "dl_all": "DL masks: every detection (false positives = negative)",
}
MODEL_TITLES = {
    "radiomics": "Radiomics",
    "dl": "DL",
    "fused": "DL + radiomics",
    "agreed": "Agreed labels (DL = radiomics)",
}
CLASSIFICATION_MEASURES = ("auc", "sensitivity", "specificity", "accuracy", "f1")
MEASURE_TITLES = {
    "auc": "AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "f1": "F1",
}

DEFINITIONS: dict[str, str] = {
    "hit": (
        "A detection hits a ground-truth lesion when the IoU of their masks passes the rule "
        "(iou>=0.1: the authors' follow-up; iou>=0.5: COCO). Matching is one to one, greedy "
        "by decreasing IoU (ties: the higher-scoring detection)."
    ),
    "identification_sensitivity": (
        "Per lesion: the fraction of ground-truth lesions hit. Per image / per patient: the "
        "fraction of images / patients with at least one ground-truth lesion in which at least "
        "one lesion is hit."
    ),
    "identification_accuracy": (
        "The paper does not define it; here: as sensitivity, but the hit must come from a "
        "detection whose DL label (DL probability at the bundle's DL threshold) is the "
        "lesion's label (benign / malignant). Same denominators as sensitivity."
    ),
    "dice": (
        "Per lesion: Dice with the matched detection's mask (2 IoU / (1 + IoU)); 'mean Dice' "
        "counts a missed lesion as 0, 'mean Dice of hit lesions' leaves it out. Per image: "
        "Dice of the union of the predicted masks vs the union of the ground-truth masks "
        "(images with a lesion; does not depend on the hit rule). Per patient: the same, "
        "pooled over the patient's images with a lesion (2 sum|P&G| / (sum|P| + sum|G|))."
    ),
    "classification_manual": (
        "Cases: the ground-truth lesions. Radiomics on the ground-truth mask with the bundle's "
        "radiomics settings and classifier; DL probability from the detection matched to the "
        "lesion under the classification rule; a lesion without a matching detection has no "
        "DL, DL + radiomics or agreed value (excluded from those rows, counted)."
    ),
    "classification_dl": (
        "Cases: the detections that match a ground-truth lesion (classification rule), with "
        "that lesion's label; probabilities as the node reports them (radiomics on the DL "
        "mask). False-positive detections are counted apart."
    ),
    "classification_dl_all": (
        "Cases: every detection; truth malignant when it matches a malignant lesion, else "
        "benign (a benign lesion or a false positive), as the paper's DL-mask counts suggest "
        "(2463 negatives for 590 lesions)."
    ),
    "per_patient": (
        "Score: the maximum over the patient's cases (manual: ground-truth lesions, patients "
        "with a lesion only; DL: all detections, every patient, 0 without detection). Truth: "
        "any malignant lesion. DL + radiomics is labelled with the bundle's patient threshold "
        "(the node's rule); radiomics and DL with their lesion thresholds (malignant when any "
        "lesion is)."
    ),
    "agreed": (
        "The cases whose DL and radiomics labels agree, scored and labelled as DL + radiomics; "
        "'agreement' is the fraction of cases with both labels that agree."
    ),
    "thresholds": (
        "All thresholds come from the bundle's manifest (Youden index on the training "
        "predictions); none is tuned on the evaluated data."
    ),
    "bootstrap": (
        "95 % percentile intervals from resampling the cases of each table (lesions, images, "
        "detections or patients) with replacement; resamples on which a measure is undefined "
        "(e.g. one class only) are skipped and counted. Lesions and images of one patient are "
        "resampled independently (as in the paper), so per-lesion and per-image intervals "
        "ignore the correlation within a patient."
    ),
}

BOOTSTRAP_BY_PATIENT = (
    "95 % percentile intervals from resampling the patients with replacement, each drawn "
    "patient bringing all its cases (lesions, images, detections) into the table (a cluster "
    "bootstrap): the cases of one patient are not independent, and the intervals keep that "
    "correlation. Resamples on which a measure is undefined (e.g. one class only) are skipped "
    "and counted."
)

#: The paper's headline numbers (external set, 279 patients, 590 lesions) and where ours are.
PAPER_HEADLINE: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    (
        "identification sensitivity per lesion (the paper's 'per image')",
        "90% (532/590)",
        ("table2", "{rule}", "per_lesion", "sensitivity"),
        True,
    ),
    (
        "identification sensitivity per patient",
        "99% (275/279)",
        ("table2", "{rule}", "per_patient", "sensitivity"),
        True,
    ),
    (
        "mean Dice per lesion, hit lesions (the paper's 'per image')",
        "0.71",
        ("table2", "{rule}", "per_lesion", "mean_dice_hit"),
        False,
    ),
    (
        "mean Dice per patient",
        "0.80",
        ("table2", "{rule}", "per_patient", "mean_dice"),
        False,
    ),
    (
        "AUC, manual masks, DL + radiomics, per lesion",
        "0.88 [0.86, 0.91]",
        ("table3", "manual", "lesion", "rows", "fused", "metrics", "auc"),
        False,
    ),
    (
        "AUC, DL masks, DL + radiomics, per lesion (every detection)",
        "0.95 [0.94, 0.96]",
        ("table3", "dl_all", "lesion", "rows", "fused", "metrics", "auc"),
        False,
    ),
    (
        "sensitivity, DL masks, DL + radiomics, per lesion (every detection)",
        "90% (317/353) [87, 93]",
        ("table3", "dl_all", "lesion", "rows", "fused", "metrics", "sensitivity"),
        True,
    ),
    (
        "specificity, DL masks, DL + radiomics, per lesion (every detection)",
        "86% (2106/2463) [84, 87]",
        ("table3", "dl_all", "lesion", "rows", "fused", "metrics", "specificity"),
        True,
    ),
)
