"""Every notebook section of params.yaml and its model (one profile block)."""

from pydantic import BaseModel

from .maheswaranathan import NB09, NB10, NB11, NB12, NB13, NB14
from .metz import NB01, NB02, NB03, NB04, NB05, NB06, NB07, NB08
from .thesis import NB15, NB16, NB17

SECTIONS: dict[str, type[BaseModel]] = {
    "nb01": NB01, "nb02": NB02, "nb03": NB03, "nb04": NB04, "nb05": NB05, "nb06": NB06, "nb07": NB07, "nb08": NB08,
    "nb09": NB09, "nb10": NB10, "nb11": NB11, "nb12": NB12, "nb13": NB13, "nb14": NB14, "nb15": NB15, "nb16": NB16,
    "nb17": NB17,
}
