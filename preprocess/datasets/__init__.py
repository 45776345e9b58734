"""Public datasets straight from their published index files (``avfusion shards build
--dataset``): one reader per dataset kind, the media lookup, and the separation pair list."""

NAMES = ("vggsound", "audioset", "avsbench-s4", "vggss", "flickr")  # --dataset choices
