"""The batch indexer: folders of media -> embeddings in the store -> FAISS indices."""
