"""nvmf_phoenix.plugin"""
