"""The engine's image side: which images containers use, where the layers it makes live, and
docker commit (a container's overlay upper directory becomes a layer). A part of `state.Engine`,
apart to keep each module readable; it uses the engine's lock and records.
"""
from __future__ import annotations

from .. import cleanup
from . import images as images_mod


class EngineImages:
    def images_in_use(self) -> set[str]:
        with self._changed:
            return {r.image_id for r in self._records.values()}

    def layers_dir(self):
        """Where layers this engine makes (commit, load) live while it runs: a claimed work dir."""
        with self._changed:
            if self._layers_dir is None:
                self._layers_dir = cleanup.WORK_DIR / cleanup.unique_name("images")
                cleanup.claim("dir", self._layers_dir.name)
                self._layers_dir.mkdir(parents=True)
            return self._layers_dir

    def commit(self, ref: str, tag: str | None, comment: str, config: dict, pause: bool = True):
        """docker commit: a running container is frozen while its upper directory is copied, as
        Docker pauses it; a stopped one's root is kept until rm."""
        record, process, running = self.process_or_root(ref)
        frozen = running and pause and not record.paused
        if frozen:
            process.pause()
        try:
            image = images_mod.commit(process.upper, self.layers_dir(), self.images.find(record.image_id),
                                      tag, comment, {"Cmd": record.spec.cmd or record.spec.argv,
                                                     "Env": record.spec.env, **config})
        finally:
            if frozen:
                process.unpause()
        return self.images.put(image)
