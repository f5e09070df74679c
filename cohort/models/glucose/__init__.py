"""Glucose–insulin models: the Bergman minimal model, the UVA/Padova S2008 simulator and a
reduced T1D model for CGM twins.

Importing this package registers ``bergman``, ``uva_padova`` and ``t1d_minimal``. Helpers:
:func:`fit_ivgtt` (minimal-model analysis of an IVGTT), :func:`reference_patients`
(simglucose's 30 patients), :func:`sample_patients` (new patients from a prior fitted to
them), :func:`meal_records` and :func:`insulin_records` (dosing records in the model's units).
"""

from cohort.models.glucose.bergman import Bergman, IVGTTFit, fit_ivgtt, predict_ivgtt
from cohort.models.glucose.meals import (
    EAT_RATE,
    combine,
    insulin_records,
    meal_records,
    queued_meals,
)
from cohort.models.glucose.patients import (
    GROUPS,
    PatientPrior,
    PatientSamplingError,
    as_population,
    derive_basal,
    patient_prior,
    reference_patients,
    sample_patients,
)
from cohort.models.glucose.t1d_minimal import T1DMinimal
from cohort.models.glucose.uva_padova import PMOL_PER_U, UvaPadova

__all__ = [
    "EAT_RATE",
    "GROUPS",
    "PMOL_PER_U",
    "Bergman",
    "IVGTTFit",
    "PatientPrior",
    "PatientSamplingError",
    "T1DMinimal",
    "UvaPadova",
    "combine",
    "derive_basal",
    "fit_ivgtt",
    "insulin_records",
    "meal_records",
    "queued_meals",
    "patient_prior",
    "as_population",
    "predict_ivgtt",
    "reference_patients",
    "sample_patients",
]
