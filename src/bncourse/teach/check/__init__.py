"""Exercise checks: each takes the learner's function, tests it on fresh random inputs against the
package's reference, and either prints one line or raises :class:`CheckFailed` saying what is wrong.

One module per chapter; every check is re-exported here, so a notebook calls ``bn.check.NAME(fn)``.
"""

from .benefits import *  # noqa: F403
from .core import CheckFailed, prediction
from .devices import *  # noqa: F403
from .flow import *  # noqa: F403
from .hardware import *  # noqa: F403
from .inference import *  # noqa: F403
from .layers_practice import *  # noqa: F403
from .practice import *  # noqa: F403
from .problem import *  # noqa: F403
from .scaling import *  # noqa: F403
from .shift import *  # noqa: F403
from .training import *  # noqa: F403
