"""nvmf_phoenix.embedded"""
