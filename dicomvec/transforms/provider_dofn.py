"""``ProviderDoFn``: the base of DoFns that call an embedding provider (images or report texts).

One provider per DoFn instance (built in ``setup`` from a ``ProviderConfig``, closed in
``teardown``); ``report_stats()`` turns the provider's cumulative ``stats()`` (requests,
retries, ...) into Beam counters ``provider_<name>`` as deltas, so they sum across workers.
"""
from __future__ import annotations

import apache_beam as beam

from dicomvec.counters import PROVIDER_PREFIX
from dicomvec.io.providers import ProviderConfig, create_provider
from dicomvec.transforms.stage import counter


class ProviderDoFn(beam.DoFn):
    def __init__(self, provider_config: ProviderConfig):
        super().__init__()
        self.provider_config = provider_config
        self.provider = None
        self._stat_counters = {}
        self._reported_stats = {}

    def setup(self):
        self.provider = create_provider(self.provider_config)
        self.provider.setup()

    def teardown(self):
        if self.provider is not None:
            self.provider.teardown()

    def report_stats(self):
        for name, value in self.provider.stats().items():
            delta = int(value) - self._reported_stats.get(name, 0)
            if delta:
                if name not in self._stat_counters:
                    self._stat_counters[name] = counter(PROVIDER_PREFIX + name)
                self._stat_counters[name].inc(delta)
                self._reported_stats[name] = int(value)
