"""A/B experiments: the experiments file and sticky assignment (:mod:`.experiments`), exposure
logging (:mod:`.exposures`), statistics (:mod:`.stats`), `recstack ab report` (:mod:`.report`) and
the replay simulator (:mod:`.simulate`). The gateway's routing is
:mod:`recstack.serving.gateway.experiment`."""
