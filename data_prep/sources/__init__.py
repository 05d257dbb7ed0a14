"""Dataset readers by ``stmem-prepare`` source name."""

from data_prep.sources.base import Source
from data_prep.sources.challenge import Challenge2021
from data_prep.sources.code15 import CODE15
from data_prep.sources.cpsc2018 import CPSC2018
from data_prep.sources.files import Files
from data_prep.sources.mimic_iv_ecg import MIMICIVECG
from data_prep.sources.physionet2017 import PhysioNet2017
from data_prep.sources.ptbxl import PTBXL
from data_prep.sources.wfdb_folder import WFDBFolder

SOURCES: dict[str, type[Source]] = {
    cls.name: cls for cls in (PTBXL, Challenge2021, CPSC2018, CODE15, MIMICIVECG, PhysioNet2017, WFDBFolder, Files)
}
